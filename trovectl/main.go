// Command trovectl is the operator CLI and the control-plane client of the Trove-NG services: it runs the
// embedded default stack (`up`) and drives the services over NATS (`storage ...`, `job ...`, `service ...`).
package main

import (
	"os"

	"troveng.dev/trovectl/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
