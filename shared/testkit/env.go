package testkit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"troveng.dev/shared/s3test"
)

// EnvFile is where scripts/setup-containers.sh writes the environment that reaches the container engine,
// relative to the repository root (the directory holding go.work).
const EnvFile = "bin/containers.env"

var loadEnvOnce sync.Once

// LoadContainersEnv makes `go test` work from a plain shell: when DOCKER_HOST is unset and the repository
// has bin/containers.env, every variable in it that is not set yet is set in this process. It runs once,
// before the first call into testcontainers-go (whose configuration is read once per process). With
// DOCKER_HOST set, or no file (Docker found on its own), nothing changes.
func LoadContainersEnv() error {
	var err error
	loadEnvOnce.Do(func() { err = loadContainersEnv() })
	return err
}

func loadContainersEnv() error {
	if os.Getenv("DOCKER_HOST") != "" {
		return nil
	}
	root, err := RepoRoot()
	if err != nil {
		return nil // not inside the repository: testcontainers-go looks for an engine by itself
	}
	f, err := os.Open(filepath.Join(root, EnvFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("testkit: %w", err)
	}
	defer func() { _ = f.Close() }()
	vars, err := ParseEnv(f)
	if err != nil {
		return fmt.Errorf("testkit: %s: %w", f.Name(), err)
	}
	for _, kv := range vars {
		if _, set := os.LookupEnv(kv[0]); !set {
			if err := os.Setenv(kv[0], kv[1]); err != nil {
				return fmt.Errorf("testkit: %w", err)
			}
		}
	}
	return nil
}

// ParseEnv reads KEY=VALUE lines (an optional "export " prefix, blank lines and # comments allowed; a
// value may be wrapped in single or double quotes). It returns the pairs in file order.
func ParseEnv(r io.Reader) ([][2]string, error) {
	var out [][2]string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		key, value, ok := strings.Cut(line, "=")
		if !ok || !validEnvName(key) {
			return nil, fmt.Errorf("line %d: want KEY=VALUE, got %q", n, line)
		}
		if len(value) >= 2 && (value[0] == '"' || value[0] == '\'') && value[len(value)-1] == value[0] {
			value = value[1 : len(value)-1]
		}
		out = append(out, [2]string{key, value})
	}
	return out, sc.Err()
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		letter := c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'
		digit := i > 0 && c >= '0' && c <= '9'
		if !letter && !digit {
			return false
		}
	}
	return true
}

// RepoRoot walks up from the working directory to the directory holding go.work (the repository root).
func RepoRoot() (string, error) {
	root, err := s3test.RepoRoot()
	if err != nil {
		return "", fmt.Errorf("testkit: %w", err)
	}
	return root, nil
}
