// Command trovectl is the operator CLI and the control-plane client of the Trove-NG services: it runs the
// embedded default stack (`up`), drives the services over NATS (`storage ...`, `job ...`, `service ...`) and
// the guests through their agents (`guest ...`).
package main

import (
	"os"

	"troveng.dev/trovectl/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
