package agent

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultReadyLag is the lag bound of /readyz.
const DefaultReadyLag = 10 * time.Second

// Handler serves the agents' operational endpoints:
//
//	/metrics  Prometheus metrics gathered from reg (see NewMetrics)
//	/healthz  200 "ok" while the process serves HTTP
//	/readyz   200 "ready" when notReady returns nothing; else 503 and
//	          the reasons, one line each (see NotReady)
func Handler(reg prometheus.Gatherer, notReady func() []string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if why := notReady(); len(why) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.Join(why, "\n"))
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// NotReady returns, one line each, why agents are not ready: every agent
// must stream as the active agent of its slot with a lag below maxLag (0:
// DefaultReadyLag). A standby is not ready: it streams nothing until it
// takes over.
func NotReady(maxLag time.Duration, agents ...*Agent) []string {
	if maxLag <= 0 {
		maxLag = DefaultReadyLag
	}
	var why []string
	for _, a := range agents {
		if ok, reason := a.Ready(maxLag); !ok {
			why = append(why, fmt.Sprintf("store %s (slot %s): %s", a.cfg.Name, a.cfg.Slot, oneLine(reason)))
		}
	}
	return why
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
