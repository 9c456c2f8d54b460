module troveng.dev/services/restore

go 1.26.8

require troveng.dev/shared v0.0.0

replace troveng.dev/shared => ../../shared
