package devstack

// Tie ties v, a server just started, to the test's life: when err (the
// start's error) is not nil the test ends, reported as startMsg followed
// by the error; otherwise stop(v) runs when the test ends, and an error
// from it fails the test, reported as stopMsg followed by the error.
//
//	c, err := devstack.Start(ctx, opts)
//	c = devstack.Tie(tb, c, err, (*devstack.Cluster).Destroy, "start: ", "destroy: ")
func Tie[T any](tb TB, v T, err error, stop func(T) error, startMsg, stopMsg string) T {
	tb.Helper()
	if err != nil {
		tb.Fatalf("%s%v", startMsg, err)
	}
	tb.Cleanup(func() {
		if err := stop(v); err != nil {
			tb.Errorf("%s%v", stopMsg, err)
		}
	})
	return v
}
