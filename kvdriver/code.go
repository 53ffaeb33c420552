package kvdriver

import (
	"context"
	"errors"
	"strconv"
)

// ErrorCode says what a store error means for its caller. Code finds it in
// any error of a Store; Retryable tells the codes worth retrying.
type ErrorCode int

const (
	// OK: no error.
	OK ErrorCode = iota
	// Unknown: not classified, typically a failure of the server or the
	// network; worth retrying.
	Unknown
	// NotFound: the key does not exist (ErrNotFound).
	NotFound
	// Compacted: the history a watch needs is gone (ErrCompacted); list
	// again and watch from the listed revision.
	Compacted
	// Conflict: a Require of the batch did not hold (ErrConflict).
	Conflict
	// InvalidArgument: a key, prefix, value, batch, revision or URL breaks
	// the rules (ErrInvalidKey, ErrInvalidValue, ErrInvalidBatch,
	// ErrInvalidURL, ErrUnsupportedScheme).
	InvalidArgument
	// TooLarge: a key, value or batch exceeds the store's limits
	// (ErrTooLarge).
	TooLarge
	// Closed: the store is closed (ErrClosed).
	Closed
	// PermissionDenied: the credentials are refused or lack a privilege;
	// retrying cannot help until an operator acts.
	PermissionDenied
	// FailedPrecondition: the store cannot serve the call in its present
	// state (its schema is missing, the server is read-only); retrying
	// cannot help until an operator acts.
	FailedPrecondition
	// Unavailable: the server could not be reached or did not answer in
	// time; worth retrying.
	Unavailable
	// Canceled: the caller's context was cancelled.
	Canceled
)

var codeNames = [...]string{"OK", "Unknown", "NotFound", "Compacted", "Conflict", "InvalidArgument",
	"TooLarge", "Closed", "PermissionDenied", "FailedPrecondition", "Unavailable", "Canceled"}

// String returns the code's name ("Unavailable").
func (c ErrorCode) String() string {
	if c >= 0 && int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "ErrorCode(" + strconv.Itoa(int(c)) + ")"
}

// Retryable reports whether a call that failed with this code may succeed
// when repeated later unchanged: Unknown and Unavailable.
func (c ErrorCode) Retryable() bool { return c == Unknown || c == Unavailable }

// Code classifies err: the code a Store gave it, or else the one its
// sentinels and context errors name (OK for nil, Unknown for anything
// else). Errors of Open are classified this way too.
func Code(err error) ErrorCode {
	if err == nil {
		return OK
	}
	var se *storeError
	if errors.As(err, &se) {
		return se.code
	}
	return sentinelCode(err)
}

// Retryable reports whether the call that returned err is worth repeating
// unchanged, with backoff: the store may be unreachable for now, but
// nothing says the call itself is wrong, refused or obsolete. It is the
// one place that decides this for every driver.
func Retryable(err error) bool { return err != nil && Code(err).Retryable() }

// sentinelCode classifies err by the package's sentinels and the context
// errors.
func sentinelCode(err error) ErrorCode {
	switch {
	case errors.Is(err, ErrNotFound):
		return NotFound
	case errors.Is(err, ErrCompacted):
		return Compacted
	case errors.Is(err, ErrConflict):
		return Conflict
	case errors.Is(err, ErrTooLarge):
		return TooLarge
	case errors.Is(err, ErrClosed):
		return Closed
	case errors.Is(err, ErrInvalidKey), errors.Is(err, ErrInvalidValue), errors.Is(err, ErrInvalidBatch),
		errors.Is(err, ErrInvalidURL), errors.Is(err, ErrUnsupportedScheme):
		return InvalidArgument
	case errors.Is(err, context.Canceled):
		return Canceled
	case errors.Is(err, context.DeadlineExceeded):
		// A call that timed out found the store too slow or unreachable.
		return Unavailable
	}
	return Unknown
}

// codeSentinels are the sentinels a Store adds to a driver error its
// ErrorCode classified, so errors.Is answers the same for every driver.
var codeSentinels = map[ErrorCode]error{
	NotFound:  ErrNotFound,
	Compacted: ErrCompacted,
	Conflict:  ErrConflict,
	TooLarge:  ErrTooLarge,
	Closed:    ErrClosed,
}

// storeError is an error of a Store call: the driver and the operation in
// its message, and its code.
type storeError struct {
	code ErrorCode
	err  error
}

func (e *storeError) Error() string { return e.err.Error() }
func (e *storeError) Unwrap() error { return e.err }
