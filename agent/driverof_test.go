package agent

import "github.com/bagger/lenkwerk/kvdriver"

// driverOf returns s's driver, for a test to wrap some of its calls in a
// Store of its own (kvdriver.NewStore). That Store shares the driver: s
// closes it, so the wrapping Store is not closed.
func driverOf(s *kvdriver.Store) kvdriver.Driver {
	var d kvdriver.Driver
	if !s.As(&d) {
		panic("*kvdriver.Store without a driver")
	}
	return d
}
