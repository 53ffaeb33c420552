package containers_test

import (
	"flag"
	"os"
	"strconv"
	"testing"
)

// scenarioParallel is how many scenarios run at once unless -parallel is
// given. go test's default (GOMAXPROCS, 2 on CI) would run them two by
// two, yet they spend most of their time waiting (a fault lasting 30 s,
// convergence), not computing. Measured on the 2-core CI machine, busy:
// -parallel 2 took 125 s, 4 took 115 s, 8 (all at once) 97 s.
const scenarioParallel = 8

func TestMain(m *testing.M) {
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		flag.Set("test.parallel", strconv.Itoa(scenarioParallel))
	}
	os.Exit(m.Run())
}
