package backup

import (
	"troveng.dev/shared/natsauth"
	"troveng.dev/shared/natsauth/roles"
)

// Permissions is the least-privilege NATS permission set of a backup service replica (roles.GuestDriver). The
// tests run the service under exactly this set and fail on any permission violation.
func Permissions() natsauth.Permissions { return roles.GuestDriver(Family) }
