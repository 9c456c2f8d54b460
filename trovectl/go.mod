module troveng.dev/trovectl

go 1.26.8

require (
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/spf13/cobra v1.10.2 // indirect
	github.com/spf13/pflag v1.0.9 // indirect
	troveng.dev/services/storage v0.0.0
	troveng.dev/shared v0.0.0
)

replace troveng.dev/shared => ../shared

replace troveng.dev/services/storage => ../services/storage
