package controlplane

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// maxBody is the largest request body accepted; larger ones get 413.
const maxBody = 8 << 20

// apiError is an error response in the API's shape:
// {"type":"error","error":{"type":…,"message":…,"details":{…}}}.
type apiError struct {
	status  int
	typ     string
	message string
	details map[string]any
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.status, e.typ, e.message) }

func newAPIError(status int, typ, format string, a ...any) *apiError {
	return &apiError{status: status, typ: typ, message: fmt.Sprintf(format, a...)}
}

func errInvalid(format string, a ...any) *apiError {
	return newAPIError(http.StatusBadRequest, "invalid_request_error", format, a...)
}

func errUnauthenticated(format string, a ...any) *apiError {
	return newAPIError(http.StatusUnauthorized, "authentication_error", format, a...)
}

func errForbidden(format string, a ...any) *apiError {
	return newAPIError(http.StatusForbidden, "permission_error", format, a...)
}

func errNotFound(format string, a ...any) *apiError {
	return newAPIError(http.StatusNotFound, "not_found_error", format, a...)
}

func errConflict(format string, a ...any) *apiError {
	return newAPIError(http.StatusConflict, "conflict_error", format, a...)
}

// writeJSON writes v as a JSON response.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"type":"error","error":{"type":"api_error","message":"could not encode the response"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeError writes err as an API error: an *apiError as itself, anything
// else as a 500 whose message does not leak internals.
func writeError(w http.ResponseWriter, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = newAPIError(http.StatusInternalServerError, "api_error", "internal error in the Perimeter control plane; its log has the details")
	}
	// These answers are final: the SDK retries 409 by default, which would
	// only repeat the conflict.
	if ae.status == http.StatusConflict || ae.status == http.StatusPreconditionFailed {
		w.Header().Set("x-should-retry", "false")
	}
	body := map[string]any{"type": ae.typ, "message": ae.message}
	if ae.details != nil {
		body["details"] = ae.details
	}
	writeJSON(w, ae.status, map[string]any{"type": "error", "error": body})
}

// decodeBody reads a JSON object body into v. Empty bodies are allowed when
// optional; v is then left untouched.
func decodeBody(r *http.Request, v any, optional bool) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return newAPIError(http.StatusRequestEntityTooLarge, "request_too_large",
				"request body is larger than %d bytes; send smaller requests (for example one event per request)", maxBody)
		}
		return errInvalid("could not read the request body: %v", err)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		if optional {
			return nil
		}
		return errInvalid("request body is empty; send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return errInvalid("request body is not valid JSON: %v (at byte %d)", se, se.Offset)
		case errors.As(err, &te):
			field := te.Field
			if field == "" {
				field = "the body"
			}
			return errInvalid("request body: %s must be %s, not JSON %s", field, jsonKind(te.Type.String()), te.Value)
		default:
			return errInvalid("request body is not valid JSON: %v", err)
		}
	}
	// dec.More reports false at a stray '}' or ']', so look at the bytes.
	if len(bytes.TrimLeft(b[dec.InputOffset():], " \t\r\n")) > 0 {
		return errInvalid("request body has data after the JSON object; send exactly one object")
	}
	return nil
}

func jsonKind(goType string) string {
	switch {
	case strings.HasPrefix(goType, "map["), strings.HasPrefix(goType, "struct"), strings.HasPrefix(goType, "controlplane."):
		return "an object"
	case strings.HasPrefix(goType, "[]"):
		return "an array"
	case goType == "string":
		return "a string"
	case goType == "bool":
		return "a boolean"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "float"):
		return "a number"
	}
	return goType
}
