package transfer

import (
	"io"
	"time"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

// Placeholder until shared/frames is in the tree.
func newFrameWriter(dst io.Writer, f *guestv1.FrameSpec) (frameWriter, error) {
	return nil, errs.Unavailablef("frames are not built into this agent yet")
}

func newFrameReader(src io.Reader, f *guestv1.FrameSpec) (io.ReadCloser, map[string]time.Duration, error) {
	return nil, nil, errs.Unavailablef("frames are not built into this agent yet")
}
