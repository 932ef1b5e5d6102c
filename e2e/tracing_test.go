package e2e

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// span is one span an OTLP receiver got, decoded.
type span struct {
	traceID, id, parent, name, service, instance string
	kind                                         tracepb.Span_SpanKind
	attrs                                        map[string]string
	events                                       []string
	failed                                       bool
	took                                         time.Duration
}

// otlpReceiver is an OTLP/HTTP traces endpoint on 127.0.0.1 that decodes
// the protobuf exports with the OpenTelemetry proto module and keeps the spans.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []span
	url   string
}

func startOTLP(t *testing.T) *otlpReceiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &otlpReceiver{url: "http://" + ln.Addr().String()}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" || proto.Unmarshal(body, &req) != nil {
			http.Error(w, "not an OTLP/HTTP protobuf trace export", http.StatusBadRequest)
			return
		}
		o.add(&req)
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return o
}

func text(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	case *commonpb.AnyValue_DoubleValue:
		return fmt.Sprint(x.DoubleValue)
	case *commonpb.AnyValue_BoolValue:
		return fmt.Sprint(x.BoolValue)
	case *commonpb.AnyValue_ArrayValue:
		var parts []string
		for _, e := range x.ArrayValue.GetValues() {
			parts = append(parts, text(e))
		}
		return strings.Join(parts, ",")
	}
	return ""
}

func (o *otlpReceiver) add(req *coltracepb.ExportTraceServiceRequest) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		res := map[string]string{}
		for _, a := range rs.GetResource().GetAttributes() {
			res[a.GetKey()] = text(a.GetValue())
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				sp := span{traceID: hex.EncodeToString(s.GetTraceId()), id: hex.EncodeToString(s.GetSpanId()),
					parent: hex.EncodeToString(s.GetParentSpanId()), name: s.GetName(), kind: s.GetKind(),
					service: res["service.name"], instance: res["service.instance.id"], attrs: map[string]string{},
					failed: s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR,
					took:   time.Duration(s.GetEndTimeUnixNano() - s.GetStartTimeUnixNano())}
				for _, a := range s.GetAttributes() {
					sp.attrs[a.GetKey()] = text(a.GetValue())
				}
				for _, e := range s.GetEvents() {
					sp.events = append(sp.events, e.GetName())
				}
				o.spans = append(o.spans, sp)
			}
		}
	}
}

// trace returns the spans of one trace.
func (o *otlpReceiver) trace(id string) []span {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []span
	for _, s := range o.spans {
		if s.traceID == id {
			out = append(out, s)
		}
	}
	return out
}

// waitFor waits until the trace holds spans that cond accepts.
func (o *otlpReceiver) waitFor(t *testing.T, id, what string, cond func([]span) bool) []span {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s := o.trace(id); cond(s) {
			return s
		} else if time.Now().After(deadline) {
			var names []string
			for _, x := range s {
				names = append(names, fmt.Sprintf("%s/%s(%s<-%s)", x.service, x.name, x.id, x.parent))
			}
			t.Fatalf("trace %s never held %s; it holds %v", id, what, names)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func find(spans []span, service, name string) []span {
	var out []span
	for _, s := range spans {
		if s.service == service && s.name == name {
			out = append(out, s)
		}
	}
	return out
}

// tracingEnv exports a fleet's spans to o, every 100 ms.
func tracingEnv(o *otlpReceiver, extra map[string]string) map[string]string {
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": o.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// submitTraced submits a job as the child of a caller's span.
func submitTraced(t *testing.T, base, session, message string) (jobID, traceID, callerSpan string) {
	t.Helper()
	traceID, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	r := submit(t, base, session, message, map[string]string{"traceparent": "00-" + traceID + "-" + callerSpan + "-01"})
	if r.Status != http.StatusAccepted {
		t.Fatalf("submit: %d %s", r.Status, r.Raw)
	}
	return r.Body["job_id"].(string), traceID, callerSpan
}

// A request sent with a traceparent is one trace: the API's server span
// under the caller's, the enqueue under it, and the worker's queue wait,
// attempt and provider call (GenAI attributes, the first token) under that;
// the provider gets the trace's traceparent, the job record and the job's
// log lines the trace id.
func TestOneTraceFromSubmitToProvider(t *testing.T) {
	rd := testkit.StartRedis(t)
	otlp := startOTLP(t)
	fake := llmfake.NewOpenAI(t)
	apis, workers := fleet(t, rd, 1, 1, providerEnv(fake, tracingEnv(otlp, nil)))
	id, traceID, caller := submitTraced(t, apis[0].URL(), "traced", "where does the time go")
	if j := waitJob(t, apis[0].URL(), id); j.Body["status"] != "succeeded" || j.Body["trace_id"] != traceID {
		t.Fatalf("job: %s", j.Raw)
	}
	spans := otlp.waitFor(t, traceID, "the API's and the worker's spans", func(s []span) bool {
		return len(find(s, "chatfleet-worker", "chat fake-model")) == 1 && len(find(s, "chatfleet-api", "POST /api/v1/chat/jobs")) == 1
	})
	server := find(spans, "chatfleet-api", "POST /api/v1/chat/jobs")
	if len(server) != 1 || server[0].parent != caller || server[0].kind != tracepb.Span_SPAN_KIND_SERVER || server[0].attrs["http.response.status_code"] != "202" {
		t.Fatalf("API server span: %+v", server)
	}
	send := find(spans, "chatfleet-api", "send chatfleet-normal")
	if len(send) != 1 || send[0].parent != server[0].id || send[0].kind != tracepb.Span_SPAN_KIND_PRODUCER || send[0].attrs["messaging.message.id"] != id {
		t.Fatalf("enqueue span: %+v", send)
	}
	process := find(spans, "chatfleet-worker", "process chatfleet-normal")
	wait := find(spans, "chatfleet-worker", "queue wait")
	if len(process) != 1 || process[0].parent != send[0].id || process[0].kind != tracepb.Span_SPAN_KIND_CONSUMER || process[0].attrs["chatfleet.attempt"] != "1" {
		t.Fatalf("attempt span: %+v", process)
	}
	if len(wait) != 1 || wait[0].parent != send[0].id {
		t.Fatalf("queue wait span: %+v", wait)
	}
	call := find(spans, "chatfleet-worker", "chat fake-model")[0]
	a := call.attrs
	if call.parent != process[0].id || call.kind != tracepb.Span_SPAN_KIND_CLIENT || a["gen_ai.system"] != "openai" || a["gen_ai.operation.name"] != "chat" ||
		a["gen_ai.request.model"] != "fake-model" || a["gen_ai.response.model"] == "" || a["gen_ai.usage.input_tokens"] == "" || a["gen_ai.usage.output_tokens"] == "" ||
		a["gen_ai.response.finish_reasons"] != "stop" || !strings.Contains(strings.Join(call.events, " "), "gen_ai.first_token") ||
		a["chatfleet.model"] != "fake-model" || a["chatfleet.deployment"] != "openai" {
		t.Fatalf("provider call span: %+v", call)
	}
	for k, v := range a {
		if strings.Contains(v, "where does the time go") {
			t.Fatalf("the prompt is in the span's attribute %s", k)
		}
	}
	// The HTTP call under it carried the trace to the provider.
	tps := fake.Traceparents()
	if len(tps) != 1 || !strings.HasPrefix(tps[0], "00-"+traceID+"-") {
		t.Fatalf("the provider got traceparent %q", tps)
	}
	var logged bool
	for _, l := range workers[0].Logs() {
		if strings.Contains(l, `"job finished"`) && strings.Contains(l, id) {
			logged = strings.Contains(l, `"trace_id":"`+traceID+`"`) && strings.Contains(l, `"span_id":"`+process[0].id+`"`)
		}
	}
	if !logged {
		t.Fatal("the job's log line carries no trace_id and span_id")
	}
	t.Logf("trace %s: %d spans", traceID, len(spans))
}

// A job retried after a provider failure, and a job taken over after its
// worker was SIGKILLed: every attempt is in the job's one trace.
func TestRetriesAndTakeoversStayInTheTrace(t *testing.T) {
	t.Run("retry", func(t *testing.T) {
		rd := testkit.StartRedis(t)
		otlp := startOTLP(t)
		fake := llmfake.NewOpenAI(t)
		fake.SetPlan(func(call int) llmfake.Step {
			if call == 1 {
				return llmfake.Step{Status: 500, Message: "upstream broke"}
			}
			return llmfake.Step{}
		})
		apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, tracingEnv(otlp, nil)))
		id, traceID, _ := submitTraced(t, apis[0].URL(), "retried", "try again")
		if j := waitJob(t, apis[0].URL(), id); j.Body["status"] != "succeeded" || j.Body["attempts"] != float64(2) {
			t.Fatalf("job: %s", j.Raw)
		}
		spans := otlp.waitFor(t, traceID, "two attempts", func(s []span) bool { return len(find(s, "chatfleet-worker", "process chatfleet-normal")) == 2 })
		byAttempt := map[string]span{}
		for _, s := range find(spans, "chatfleet-worker", "process chatfleet-normal") {
			byAttempt[s.attrs["chatfleet.attempt"]] = s
		}
		if !byAttempt["1"].failed || byAttempt["2"].failed || byAttempt["1"].parent != byAttempt["2"].parent {
			t.Fatalf("attempts: %+v", byAttempt)
		}
		calls := find(spans, "chatfleet-worker", "chat fake-model")
		if len(calls) != 2 {
			t.Fatalf("provider calls in the trace: %d, want 2", len(calls))
		}
	})
	t.Run("takeover", func(t *testing.T) {
		rd := testkit.StartRedis(t)
		otlp := startOTLP(t)
		fake := llmfake.NewOpenAI(t)
		fake.SetPlan(func(call int) llmfake.Step {
			if call == 1 {
				return llmfake.Step{FirstByteDelay: 30 * time.Second} // the worker dies waiting
			}
			return llmfake.Step{}
		})
		env := providerEnv(fake, tracingEnv(otlp, map[string]string{"CHATFLEET_JOB_LEASE": "1s"}))
		apis, workers := fleet(t, rd, 1, 1, env)
		id, traceID, _ := submitTraced(t, apis[0].URL(), "taken-over", "survive me")
		otlp.waitFor(t, traceID, "the first attempt's queue wait", func(s []span) bool { return len(find(s, "chatfleet-worker", "queue wait")) == 1 })
		for deadline := time.Now().Add(10 * time.Second); fake.Calls() == 0; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the first attempt never called the provider")
			}
		}
		workers[0].Signal(syscall.SIGKILL)
		if _, ok := workers[0].Wait(5 * time.Second); !ok {
			t.Fatal("the killed worker did not exit")
		}
		testkit.StartProc(t, "worker-2", workerBin, fleetEnv(rd.URL(), env))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		j, err := client.New(apis[0].URL()).Wait(ctx, id)
		if err != nil || j.Status != "succeeded" || j.Attempts != 2 {
			t.Fatalf("job: %+v %v", j, err)
		}
		spans := otlp.waitFor(t, traceID, "the takeover's attempt", func(s []span) bool { return len(find(s, "chatfleet-worker", "process chatfleet-normal")) == 1 })
		first, second := find(spans, "chatfleet-worker", "queue wait")[0], find(spans, "chatfleet-worker", "process chatfleet-normal")[0]
		if first.attrs["chatfleet.attempt"] != "1" || second.attrs["chatfleet.attempt"] != "2" || first.instance == second.instance || first.parent != second.parent {
			t.Fatalf("first attempt %+v, takeover %+v", first, second)
		}
		t.Logf("attempt 1 on %s (killed; its unfinished spans are lost with it), attempt 2 on %s, one trace", first.instance, second.instance)
	})
}

// A turn submitted behind an unfinished turn of its session waits for it:
// its trace shows that wait apart from its time in the queue.
func TestSessionTurnWaitIsItsOwnSpan(t *testing.T) {
	rd := testkit.StartRedis(t)
	otlp := startOTLP(t)
	fake := llmfake.NewOpenAI(t)
	fake.Always(llmfake.Step{FirstByteDelay: 400 * time.Millisecond})
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, tracingEnv(otlp, nil)))
	first := submit(t, apis[0].URL(), "two-turns", "first", nil)
	secondTrace := "5bf92f3577b34da6a3ce929d0e0e4737"
	second := submit(t, apis[0].URL(), "two-turns", "second", map[string]string{"traceparent": "00-" + secondTrace + "-10f067aa0ba902b8-01"})
	for _, r := range []response{first, second} {
		if j := waitJob(t, apis[0].URL(), r.Body["job_id"].(string)); j.Body["status"] != "succeeded" {
			t.Fatalf("job: %s", j.Raw)
		}
	}
	spans := otlp.waitFor(t, secondTrace, "the second turn's waits", func(s []span) bool {
		return len(find(s, "chatfleet-worker", "session turn wait")) == 1 && len(find(s, "chatfleet-worker", "queue wait")) == 1
	})
	send := find(spans, "chatfleet-api", "send chatfleet-normal")
	turn, queue := find(spans, "chatfleet-worker", "session turn wait")[0], find(spans, "chatfleet-worker", "queue wait")[0]
	if len(send) != 1 || turn.parent != send[0].id || queue.parent != send[0].id || turn.took < 300*time.Millisecond {
		t.Fatalf("waits %+v %+v under %+v", turn, queue, send)
	}
	t.Logf("the second turn waited %s for the first, then %s in the queue", turn.took.Round(time.Millisecond), queue.took.Round(time.Millisecond))
}
