package controlplane

import (
	"net/http"
	"strings"
	"time"

	"github.com/perimeterhq/perimeter/internal/controlplane/scenario"
)

// scriptedModel is the model id agents report: no model runs here.
const scriptedModel = "perimeter-scripted"

// agentJSON is a scenario shown as a Managed Agents agent
// (BetaManagedAgentsAgent); a session carries a snapshot of it.
type agentJSON struct {
	ID                string            `json:"id"`
	Type              string            `json:"type"`
	Name              string            `json:"name"`
	Description       string            `json:"description"`
	Version           int               `json:"version"`
	Model             map[string]string `json:"model"`
	System            string            `json:"system"`
	Tools             []map[string]any  `json:"tools"`
	Skills            []any             `json:"skills"`
	MCPServers        []any             `json:"mcp_servers"`
	Multiagent        any               `json:"multiagent"`
	ExecutionIdentity map[string]string `json:"execution_identity"`
	Metadata          map[string]string `json:"metadata"`
	CreatedAt         string            `json:"created_at"`
	UpdatedAt         string            `json:"updated_at"`
	ArchivedAt        *string           `json:"archived_at"`
}

func newAgentJSON(sc *scenario.Scenario, loaded time.Time) agentJSON {
	tools := []map[string]any{{
		"type":    "agent_toolset_20260401",
		"configs": []any{},
		"default_config": map[string]any{
			"enabled":           true,
			"permission_policy": map[string]string{"type": "always_allow"},
		},
	}}
	for _, t := range sc.CustomTools {
		tools = append(tools, map[string]any{"type": "custom", "name": t.Name, "description": t.Description, "input_schema": t.InputSchema})
	}
	md := map[string]string{"perimeter.scenario.file": sc.File}
	if len(sc.Tags) > 0 {
		md["perimeter.scenario.tags"] = strings.Join(sc.Tags, ",")
	}
	ts := formatTime(loaded)
	return agentJSON{
		ID: sc.AgentID, Type: "agent", Name: sc.Name, Description: sc.Description, Version: 1,
		Model:  map[string]string{"id": scriptedModel},
		System: "", Tools: tools, Skills: []any{}, MCPServers: []any{},
		ExecutionIdentity: map[string]string{"type": "service_account"},
		Metadata:          md, CreatedAt: ts, UpdatedAt: ts,
	}
}

// agentList names the loaded agents for error messages.
func (s *Server) agentList() string {
	if len(s.agents) == 0 {
		return "no agents are loaded (start the control plane with a scenario directory)"
	}
	ids := make([]string, len(s.agents))
	for i, a := range s.agents {
		ids[i] = a.ID
	}
	return "agents: " + strings.Join(ids, ", ")
}

func (s *Server) findAgent(id string) (agentJSON, bool) {
	for _, a := range s.agents {
		if a.ID == id {
			return a, true
		}
	}
	return agentJSON{}, false
}

func (s *Server) listAgents(w http.ResponseWriter, r *http.Request) error {
	p, err := s.authenticate(r.Context(), r)
	if err != nil {
		return err
	}
	if err := p.allow("listing agents", credOperator); err != nil {
		return err
	}
	limit, after, err := pageParams(r, 20, 100)
	if err != nil {
		return err
	}
	// Cursor n means "after the n-th agent" (1-based).
	start := min(int(after), len(s.agents))
	end := min(start+limit, len(s.agents))
	data := append([]agentJSON{}, s.agents[start:end]...)
	var next *string
	if end < len(s.agents) {
		c := encodeCursor(int64(end))
		next = &c
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": data, "next_page": next})
	return nil
}

func (s *Server) getAgent(w http.ResponseWriter, r *http.Request) error {
	p, err := s.authenticate(r.Context(), r)
	if err != nil {
		return err
	}
	if err := p.allow("reading an agent", credOperator); err != nil {
		return err
	}
	id := r.PathValue("agent")
	a, ok := s.findAgent(id)
	if !ok {
		return errNotFound("agent %s not found; %s", id, s.agentList())
	}
	writeJSON(w, http.StatusOK, a)
	return nil
}
