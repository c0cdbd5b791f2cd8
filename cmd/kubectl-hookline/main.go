// kubectl-hookline: ensure webhook endpoints by URL and run day-2 operations. Installed
// on the PATH, kubectl finds it as `kubectl hookline`.
package main

import (
	"os"

	"github.com/hookline/hookline/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
