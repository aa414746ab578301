package egress

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestEgressRecordsEveryRequest(t *testing.T) {
	var call atomic.Value
	call.Store("")
	c := newCredEnv(t, func(o *Options) { o.CurrentCall = func() string { return call.Load().(string) } })
	client := c.client(nil)
	tunnelClient := c.client(c.pki.pool)

	call.Store("toolu_1")
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://api.test:%d/x?page=2", c.api.port), nil)
	req.Header.Set("Authorization", "Bearer "+c.ph)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)

	call.Store("toolu_2")
	body := `{"token":"` + c.ph + `"}`
	req, _ = http.NewRequest("POST", fmt.Sprintf("https://api.test:%d/repos", c.apiTLS.port), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)

	call.Store("toolu_3")
	resp, err = client.Get("http://nope.test/")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)

	call.Store("toolu_4")
	resp, err = tunnelClient.Get(fmt.Sprintf("https://other.test:%d/y", c.otherTLS.port))
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	tunnelClient.CloseIdleConnections()

	recs := c.records.waitFor(t, 4)
	slices.SortFunc(recs, func(a, b Record) int { return strings.Compare(a.ToolUseID, b.ToolUseID) })
	want := []Record{
		{SessionID: "sesn_test", ToolUseID: "toolu_1", Method: "GET", Host: "api.test", Port: c.api.port, Path: "/x",
			Rule: "api", HostPattern: "api.test", Allowed: true, Status: 200, Secrets: []string{"github"}},
		{SessionID: "sesn_test", ToolUseID: "toolu_2", Method: "POST", Host: "api.test", Port: c.apiTLS.port, Path: "/repos",
			Rule: "api", HostPattern: "api.test", Allowed: true, Status: 200, Secrets: []string{"github"}, Intercepted: true,
			BytesOut: int64(len(body) - len(c.ph) + len(c.value))},
		{SessionID: "sesn_test", ToolUseID: "toolu_3", Method: "GET", Host: "nope.test", Port: 80, Path: "/",
			Status: 403, Reason: "no egress rule allows host nope.test (add it under egress.allow in the policy)"},
		{SessionID: "sesn_test", ToolUseID: "toolu_4", Method: "CONNECT", Host: "other.test", Port: c.otherTLS.port,
			Rule: "other", HostPattern: "other.test", Allowed: true, Status: 200},
	}
	if diff := cmp.Diff(want, recs, cmpopts.IgnoreFields(Record{}, "Duration", "BytesIn"), cmpopts.IgnoreFields(Record{}, "BytesOut"), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	if len(recs) == 4 {
		if recs[1].BytesOut != want[1].BytesOut {
			t.Errorf("BytesOut of the substituted body = %d, want %d", recs[1].BytesOut, want[1].BytesOut)
		}
		for i, r := range recs {
			if r.Duration <= 0 || (r.Allowed && r.BytesIn == 0) {
				t.Errorf("record %d: duration %v, bytes in %d", i, r.Duration, r.BytesIn)
			}
		}
		if recs[3].BytesOut == 0 {
			t.Error("the tunnel's record counts no bytes sent")
		}
	}
	if len(c.records.all()) != 4 {
		t.Errorf("%d records for 4 requests", len(c.records.all()))
	}
}

// TestEgressNeverShowsSecretValue plants a canary secret, uses it on every
// path (substitution, echoes, an upstream error that quotes it) and checks
// that it shows in no response, record or log line.
func TestEgressNeverShowsSecretValue(t *testing.T) {
	value, ph := newCanary(), NewPlaceholder("canary")
	api := newUpstream(t, nil, echoHandler(nil))
	// An upstream that answers with garbage quoting the value, so that the
	// HTTP client's error carries it.
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer raw.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := raw.Accept()
			if err != nil {
				return
			}
			r := bufio.NewReader(conn)
			req, err := http.ReadRequest(r)
			if err == nil {
				fmt.Fprintf(conn, "%s\r\n\r\n", req.Header.Get("Authorization"))
			}
			conn.Close()
		}
	}()
	rawPort := raw.Addr().(*net.TCPAddr).Port
	resolver := loopbackNames()
	resolver["raw.test"] = []string{"127.0.0.1"}
	e := startProxy(t, Options{
		Resolver: resolver,
		Rules: []Rule{
			{Name: "api", Hosts: []string{"api.test", "raw.test"}, Ports: []int{api.port, rawPort}, AllowPrivate: true},
		},
		Credentials: []Credential{{Name: "canary", Placeholder: ph, Hosts: []string{"api.test", "raw.test"}}},
		Secrets:     &staticSecrets{values: map[string]string{"canary": value}},
	})
	client := e.client(nil)
	var seen strings.Builder
	for _, u := range []string{fmt.Sprintf("http://api.test:%d/", api.port), fmt.Sprintf("http://raw.test:%d/", rawPort)} {
		req, _ := http.NewRequest("GET", u, nil)
		req.Header.Set("Authorization", "Bearer "+ph)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		seen.WriteString(headerText(resp.Header) + body)
		if strings.Contains(u, "raw.test") && (resp.StatusCode != 502 || !strings.Contains(body, "[redacted:canary]")) {
			t.Errorf("the upstream's garbage: got %d %q", resp.StatusCode, body)
		}
	}
	if hasSecret(seen.String(), value) {
		t.Errorf("a response showed the secret:\n%s", seen.String())
	}
	for _, r := range e.records.all() {
		if hasSecret(fmt.Sprintf("%+v", r), value) {
			t.Errorf("a record shows the secret: %+v", r)
		}
	}
	// Close before reading the log, so that every line is written.
	e.proxy.Close()
	if logs := e.logs.String(); hasSecret(logs, value) || !strings.Contains(logs, "egress request") {
		t.Errorf("the log shows the secret, or nothing:\n%s", logs)
	}
}

func TestEgressServesManyClientsAtOnce(t *testing.T) {
	c := newCredEnv(t, nil)
	both := c.pki.pool.Clone()
	both.AppendCertsFromPEM(c.proxy.CACertPEM())
	client := c.client(both)
	const workers, each = 16, 12
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				var req *http.Request
				want := 200
				switch (w + i) % 4 {
				case 0:
					req, _ = http.NewRequest("GET", fmt.Sprintf("http://api.test:%d/%d", c.api.port, i), nil)
					req.Header.Set("Authorization", "Bearer "+c.ph)
				case 1:
					req, _ = http.NewRequest("POST", fmt.Sprintf("https://api.test:%d/%d", c.apiTLS.port, i), strings.NewReader(`{"t":"`+c.ph+`"}`))
					req.Header.Set("Content-Type", "application/json")
				case 2:
					req, _ = http.NewRequest("GET", fmt.Sprintf("https://other.test:%d/%d", c.otherTLS.port, i), nil)
				case 3:
					req, _ = http.NewRequest("GET", fmt.Sprintf("http://blocked.test/%d", i), nil)
					want = 403
				}
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					continue
				}
				body := readAll(t, resp)
				if resp.StatusCode != want || hasSecret(headerText(resp.Header)+body, c.value) {
					errs <- fmt.Errorf("%s %s: %d %q", req.Method, req.URL, resp.StatusCode, body)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	client.CloseIdleConnections()
	// Tunnels are recorded once closed: one record per request, except
	// that requests to other.test share the tunnels they went through.
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs := c.records.all()
		var plain, intercepted, refused, tunnels int
		for _, r := range recs {
			switch {
			case r.Method == "CONNECT":
				tunnels++
			case r.Status == 403:
				refused++
			case r.Intercepted:
				intercepted++
			default:
				plain++
			}
		}
		if plain == workers*each/4 && intercepted == workers*each/4 && refused == workers*each/4 && tunnels > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("records: %d plain, %d intercepted, %d refused, %d tunnels", plain, intercepted, refused, tunnels)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
