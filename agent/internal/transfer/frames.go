package transfer

import (
	"io"
	"time"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/frames"
)

// validateArtifactID mirrors the frame format's rule for the id bound into every frame (checked before the
// tool runs; shared/frames checks it again).
func validateArtifactID(id string) error {
	if id == "" || len(id) > frames.MaxArtifactIDLen {
		return errs.BadRequestf("frames: artifact id must be 1..%d characters", frames.MaxArtifactIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '/' || c == '-'
		if !ok {
			return errs.BadRequestf("frames: artifact id has %q at position %d; use letters, digits and . _ / -", rune(c), i)
		}
	}
	return nil
}

type frameWriterImpl struct{ *frames.Writer }

func (f frameWriterImpl) summary() frameSummary {
	s := f.Summary()
	return frameSummary{Codec: s.Codec, Frames: s.Frames, RawSize: s.RawSize, IndexSHA256: s.IndexSHA256, Stages: s.Stages}
}

// newFrameWriter encodes into dst: frames cut, compressed in parallel, sealed under the spec's key (if
// any) and hashed. The whole artifact is not hashed here: the storage client hashes the bytes it sends and
// the storage service checks them against what it stored, so a pass of our own would only repeat it.
func newFrameWriter(dst io.Writer, f *guestv1.FrameSpec) (frameWriter, error) {
	w, err := frames.NewWriter(dst, frames.Options{Codec: f.Codec, Level: f.Level, FrameSize: f.FrameSize, Workers: f.Workers,
		ArtifactID: f.ArtifactID, Key: f.Key, NoStoredHash: true})
	if err != nil {
		return nil, err
	}
	return frameWriterImpl{w}, nil
}

type frameReaderImpl struct{ *frames.Reader }

func (f frameReaderImpl) stages() map[string]time.Duration { return f.Summary().Stages }

// newFrameReader decodes src: every frame is checked (GCM tag with a key, else its SHA-256) before its
// bytes are returned; io.EOF comes only after the index and footer were checked. Those checks cover a
// resumed (spliced) transfer end to end, so the whole-artifact SHA-256 is not computed.
func newFrameReader(src io.Reader, f *guestv1.FrameSpec) (frameReader, error) {
	r, err := frames.NewReader(src, frames.ReadOptions{ArtifactID: f.ArtifactID, Key: f.Key, Workers: f.Workers,
		ExpectIndexSHA256: f.IndexSHA256, NoStoredHash: true})
	if err != nil {
		return nil, err
	}
	return frameReaderImpl{r}, nil
}
