package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"
)

// CostLimit bounds the work one condition may do on one call, in CEL's cost
// units (one per step of evaluation, a tenth per byte a string function
// reads, more for regular expressions). A condition over the limit stops
// with an error and fails closed. A million units is on the order of 0.1 s
// of the most expensive kind of work (nested comprehensions over an input
// list), and lets a regular expression of 40 characters scan a string of
// 1 MB.
const CostLimit = 1_000_000

// celEnv declares the variables a condition sees. It is safe for concurrent
// use and built once.
var celEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("tool", cel.StringType),
		cel.Variable("input", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("session", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("environment", cel.MapType(cel.StringType, cel.DynType)),
		// JSON numbers are doubles; let input.timeout > 60 compare them
		// with integer literals.
		cel.CrossTypeNumericComparisons(true),
		ext.Strings(),
	)
})

// condition is a rule's compiled when expression.
type condition struct {
	src string
	prg cel.Program
}

// compileCondition compiles and type-checks src. The errors are CEL's, each
// with its position inside the expression.
func compileCondition(src string) (*condition, []string) {
	env, err := celEnv()
	if err != nil {
		return nil, []string{err.Error()}
	}
	ast, iss := env.Compile(src)
	if iss != nil && iss.Err() != nil {
		var msgs []string
		for _, e := range iss.Errors() {
			msgs = append(msgs, fmt.Sprintf("%s (at %d:%d of the expression)",
				e.Message, e.Location.Line(), e.Location.Column()+1))
		}
		return nil, msgs
	}
	if t := ast.OutputType(); !t.IsExactType(cel.BoolType) && !t.IsExactType(cel.DynType) {
		return nil, []string{fmt.Sprintf("the condition must be a bool expression, not %s", cel.FormatCELType(t))}
	}
	prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize), cel.CostLimit(CostLimit))
	if err != nil {
		return nil, []string{err.Error()}
	}
	return &condition{src: src, prg: prg}, nil
}

// errAmbiguousInput fails every condition on an input whose keys differ
// only in case.
var errAmbiguousInput = errors.New("the input has a key twice, or keys that differ only in case, which tools may decode either way")

// eval evaluates the condition. A result that is not a bool is an error.
func (c *condition) eval(a *activation) (bool, error) {
	if a.ambiguous != "" {
		return false, fmt.Errorf("%w: %s", errAmbiguousInput, a.ambiguous)
	}
	out, _, err := c.prg.Eval(a)
	if err != nil {
		return false, err
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, fmt.Errorf("the condition evaluated to %s, not a bool", out.Type())
	}
	return bool(b), nil
}

// activation presents a call to the conditions. It is built once per call,
// on the first condition evaluated, and resolves names without a map.
type activation struct {
	tool        string
	input       map[string]any
	session     map[string]any
	environment map[string]any
	// ambiguous names the colliding input keys, if any.
	ambiguous string
	// note says how the input was presented if it was not an object.
	note string
}

func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "tool":
		return a.tool, true
	case "input":
		return a.input, true
	case "session":
		return a.session, true
	case "environment":
		return a.environment, true
	}
	return nil, false
}

func (a *activation) Parent() cel.Activation { return nil }

var emptyStrings = map[string]string{}

func orEmpty(m map[string]string) map[string]string {
	if m == nil {
		return emptyStrings
	}
	return m
}

// newActivation decodes the call's input and builds its activation.
func newActivation(c *Call) *activation {
	a := &activation{
		tool: c.Tool,
		session: map[string]any{
			"id":       c.Session.ID,
			"agent":    c.Session.Agent,
			"metadata": orEmpty(c.Session.Metadata),
		},
		environment: map[string]any{
			"id":        c.Environment.ID,
			"worker_id": c.Environment.WorkerID,
			"labels":    orEmpty(c.Environment.Labels),
		},
	}
	var v any
	switch err := json.Unmarshal(c.Input, &v); {
	case len(c.Input) == 0:
		a.note = "the input is empty; conditions see it as {}"
	case err != nil:
		a.note = "the input is not valid JSON; conditions see it as {}"
	default:
		if m, ok := v.(map[string]any); ok {
			a.input = m
			a.ambiguous = duplicateKey(c.Input)
			if a.ambiguous == "" {
				a.ambiguous = foldCollision(m)
			}
		} else {
			a.note = fmt.Sprintf("the input is a JSON %s, not an object; conditions see it as {}", jsonKind(v))
		}
	}
	if a.input == nil {
		a.input = map[string]any{}
	}
	return a
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "array"
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "bool"
	}
	return fmt.Sprintf("%T", v)
}

// duplicateKey returns a key that appears twice in one object of the JSON
// text raw, at any depth, or "" if none does. Decoders disagree about which
// of two equal keys counts: encoding/json (which decodes for the
// conditions) keeps the last, the SDK's tools the first. raw is valid JSON
// (json.Unmarshal took it): the scan only finds the strings in it and skips
// values without decoding them, so a large input costs one pass.
func duplicateKey(raw []byte) string {
	var objects []map[string]bool // per open object or array (nil) in turn
	wantKey := false              // the next string is a key
	for i := 0; i < len(raw); i++ {
		switch raw[i] {
		case '{':
			objects = append(objects, map[string]bool{})
			wantKey = true
		case '[':
			objects = append(objects, nil)
		case '}', ']':
			objects = objects[:len(objects)-1]
		case ',':
			wantKey = objects[len(objects)-1] != nil
		case '"':
			j := i + 1
			escaped := false
			for raw[j] != '"' {
				if raw[j] == '\\' {
					escaped = true
					j++
				}
				j++
			}
			if wantKey {
				key := string(raw[i+1 : j])
				if escaped {
					_ = json.Unmarshal(raw[i:j+1], &key)
				}
				seen := objects[len(objects)-1]
				if seen[key] {
					return fmt.Sprintf("%q twice", key)
				}
				seen[key] = true
				wantKey = false
			}
			i = j
		}
	}
	return ""
}

// foldCollision returns two keys of m that are equal under Unicode case
// folding ("command" and "Command"), or "" if there are none. Only inputs
// with a key that is not lower-case ASCII need the quadratic check.
func foldCollision(m map[string]any) string {
	suspect := false
	for k := range m {
		if !lowerASCII(k) {
			suspect = true
			break
		}
	}
	if !suspect {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i, k := range keys {
		for _, l := range keys[i+1:] {
			if strings.EqualFold(k, l) {
				if k > l {
					k, l = l, k
				}
				return fmt.Sprintf("%q and %q", k, l)
			}
		}
	}
	return ""
}

func lowerASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf || ('A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}
