// Package policy decides whether a tool call may run: allow it, deny it, ask
// a human before it runs (ask), or park it for an asynchronous review
// (defer). Every tool call a session makes passes Evaluate in the supervisor
// before it reaches the sandbox.
//
// A policy is a versioned YAML file of ordered rules. A rule names the tools
// it covers (exact names or path.Match globs such as "mcp__github__*"), an
// optional CEL condition over the call, and a decision. Of all the rules that
// match a call the strictest decision wins (deny > defer > ask > allow; the
// first in file order among equals); a call no rule matches gets the file's
// default. The platform's own evaluated_permission for the call is then
// combined with that result, and again the stricter of the two wins: a policy
// can tighten what the control plane allows, never loosen it.
//
// Trust model. The policy file is trusted: it comes from the operator, is
// validated completely when it is loaded, and its CEL conditions are compiled
// and type-checked then, never at call time. Everything in a Call is
// untrusted: the tool name and input come from the model, the session
// metadata from whoever created the session. The package therefore
//
//   - never lets a call make evaluation slower than a bounded amount: CEL
//     conditions run under a cost limit, regular expressions are RE2;
//   - fails closed: a condition that cannot be evaluated (a missing input
//     field, a wrong type, the cost limit) counts as true for deny, defer and
//     ask rules and as false for allow rules, and an evaluated_permission it
//     does not know counts as ask;
//   - treats an input with a key twice in one object, or whose keys differ
//     only in case ("command" and "Command"), as ambiguous and fails every
//     condition on it closed, since decoders disagree about which of the
//     two a tool would run (encoding/json keeps the last of two equal keys,
//     the SDK's tools the first).
//
// Conditions see the input exactly as the JSON object the tool receives. The
// code that runs the tool must decode the same bytes with exact key matching;
// a decoder that matches keys case-insensitively (encoding/json into a
// struct does) could run a field, such as "Command", that a condition over
// input.command never saw.
//
// The SDK's tools read a boolean field loosely: "true" and 1 count as true,
// while input.restart == true is false for them (and no error). A condition
// on a boolean field that must hold whatever its spelling compares its text:
// has(input.restart) && string(input.restart) in ["true", "1"].
package policy
