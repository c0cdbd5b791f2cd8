package testenv

import (
	"errors"
	"fmt"
	"os"
	"testing"
)

// ErrMissing marks a part of the test environment that is not on this machine (the
// envtest control plane, PostgreSQL, a pinned tool), or that was not asked for
// (HOOKLINE_TEST_UNIT_ONLY=1, make unit).
var ErrMissing = errors.New("not available")

// missing says why a suite runs without its environment; written once by Suite in
// TestMain, before any test runs, and only read afterwards.
var missing string

// Required: make test sets HOOKLINE_TEST_ENV_REQUIRED=1, and there a missing part of
// the environment fails the suite instead of skipping its tests.
func Required() bool { return os.Getenv("HOOKLINE_TEST_ENV_REQUIRED") == "1" }

// unitOnly: make unit sets HOOKLINE_TEST_UNIT_ONLY=1 to run only what needs nothing.
func unitOnly() bool { return os.Getenv("HOOKLINE_TEST_UNIT_ONLY") == "1" }

func missingf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMissing}, args...)...)
}

// Suite runs a package's tests after start has set up their environment; see Without.
func Suite(m *testing.M, start func() (stop func(), err error)) int {
	stop, err := start()
	if err != nil {
		return Without(m, err)
	}
	defer stop()
	return m.Run()
}

// Without runs a package's tests when its environment could not be set up. A part
// that is missing and not required: the tests run anyway, those that call Needs skip
// with a message naming what is missing and how to get it, the unit tests run. Any
// other error, or a required part: the suite fails.
func Without(m *testing.M, err error) int {
	if !errors.Is(err, ErrMissing) || Required() {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	missing = err.Error()
	if !unitOnly() {
		fmt.Fprintln(os.Stderr, "testenv:", missing, "- running the unit tests only")
	}
	return m.Run()
}

// SkipIfMissing is Without for a test that sets up its own environment: it skips the
// test when a part is missing and not required, and fails it on any other error.
func SkipIfMissing(t testing.TB, err error) {
	t.Helper()
	switch {
	case err == nil:
	case errors.Is(err, ErrMissing) && !Required():
		t.Skip(err.Error())
	default:
		t.Fatal(err)
	}
}

// checkWanted refuses to start anything under make unit.
func checkWanted() error {
	if unitOnly() {
		return missingf("unit tests only (HOOKLINE_TEST_UNIT_ONLY=1, make unit); make test runs everything")
	}
	return nil
}

// Needs skips a test that needs the environment when the suite runs without it.
func Needs(t testing.TB) {
	t.Helper()
	if missing != "" {
		t.Skip(missing)
	}
}

// Tool returns the path of a pinned tool in bin/ of the repository, or an error
// wrapping ErrMissing that names the make target installing it.
func Tool(name string) (string, error) {
	if err := checkWanted(); err != nil {
		return "", err
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	path := root + "/bin/" + name
	if _, err := os.Stat(path); err != nil {
		return "", missingf("%s is not installed: run `make %s` (make test installs it)", path, name)
	}
	return path, nil
}
