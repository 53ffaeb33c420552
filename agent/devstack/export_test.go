package devstack

// ReapStale exposes reapStale to the tests.
var ReapStale = reapStale

// SetFreePort replaces freePort until the returned function restores it.
func SetFreePort(f func() (int, error)) (restore func()) {
	old := freePort
	freePort = f
	return func() { freePort = old }
}
