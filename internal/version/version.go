// Package version holds the build's version, set by the linker (-X).
package version

// Version is the release this binary was built from; "dev" when built without the Makefile.
var Version = "dev"

// UserAgent is the User-Agent of every webhook request.
func UserAgent() string { return "hookline/" + Version }
