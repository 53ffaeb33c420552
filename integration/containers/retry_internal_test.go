package containers

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
)

// An attempt that hangs past its own deadline is made again, within the
// caller's; a missing container is an answer and is not retried; the
// caller's deadline ends the attempts.
func TestRetryDocker(t *testing.T) {
	old := dockerCallTimeout
	dockerCallTimeout = 50 * time.Millisecond
	t.Cleanup(func() { dockerCallTimeout = old })

	t.Run("slow attempt retried", func(t *testing.T) {
		calls := 0
		v, err := retryDocker(context.Background(), func(ctx context.Context) (int, error) {
			calls++
			if calls == 1 {
				<-ctx.Done() // the daemon does not answer in time
				return 0, fmt.Errorf("inspect: %w", ctx.Err())
			}
			return 7, nil
		})
		if err != nil || v != 7 || calls != 2 {
			t.Fatalf("got %d, %v after %d calls; want 7, nil after 2", v, err, calls)
		}
	})
	t.Run("not found is final", func(t *testing.T) {
		calls := 0
		_, err := retryDocker(context.Background(), func(ctx context.Context) (int, error) {
			calls++
			return 0, cerrdefs.ErrNotFound
		})
		if !cerrdefs.IsNotFound(err) || calls != 1 {
			t.Fatalf("got %v after %d calls; want not found after 1", err, calls)
		}
	})
	t.Run("caller's deadline ends it", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		calls := 0
		_, err := retryDocker(ctx, func(ctx context.Context) (int, error) {
			calls++
			<-ctx.Done()
			return 0, ctx.Err()
		})
		if !errors.Is(err, context.DeadlineExceeded) || calls != 1 {
			t.Fatalf("got %v after %d calls; want the deadline after 1", err, calls)
		}
	})
	t.Run("gives up", func(t *testing.T) {
		calls := 0
		_, err := retryDocker(context.Background(), func(ctx context.Context) (int, error) {
			calls++
			return 0, cerrdefs.ErrUnavailable
		})
		if err == nil || calls != dockerAttempts {
			t.Fatalf("got %v after %d calls; want an error after %d", err, calls, dockerAttempts)
		}
	})
}
