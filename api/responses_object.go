package api

import (
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// The Responses API's response object, rendered from a job.

func respStatus(st string) string {
	switch st {
	case store.StatusQueued:
		return "queued"
	case store.StatusActive, store.StatusRetrying:
		return "in_progress"
	case store.StatusSucceeded:
		return "completed"
	case store.StatusCanceled:
		return "cancelled"
	}
	return "failed"
}

// responseObject renders a response in OpenAI's schema.
func (s *Server) responseObject(r respRecord, j store.Job) map[string]any {
	return s.responseObjectAs(r, respStatus(j.Status), j.Result, j.Usage, j.Error)
}

func (s *Server) responseObjectAs(r respRecord, status string, res *store.Result, u *store.Usage, jerr *store.JobError) map[string]any {
	model := r.Model
	if res != nil && res.Model != "" {
		model = res.Model
	}
	if model == "" {
		model = s.defaultModel()
	}
	output := []any{}
	if res != nil && status == "completed" {
		output = outputItems(jobOfResp(r.ID), res)
	}
	var usage any
	if u != nil && status == "completed" {
		usage = map[string]any{"input_tokens": u.PromptTokens, "output_tokens": u.CompletionTokens, "total_tokens": u.PromptTokens + u.CompletionTokens,
			"input_tokens_details": map[string]int{"cached_tokens": 0}, "output_tokens_details": map[string]int{"reasoning_tokens": 0}}
	}
	var errObj any
	if status == "failed" && jerr != nil {
		errObj = map[string]any{"code": jerr.Code, "message": jerr.Message}
	}
	var instructions, previous, user any
	if r.Instructions != "" {
		instructions = r.Instructions
	}
	if r.Previous != "" {
		previous = r.Previous
	}
	if r.User != "" {
		user = r.User
	}
	meta := r.Metadata
	if meta == nil {
		meta = map[string]string{}
	}
	gp := r.Params
	if gp == nil {
		gp = &tasks.GenParams{}
	}
	tools := make([]any, 0, len(gp.Tools))
	for _, t := range gp.Tools {
		tools = append(tools, map[string]any{"type": "function", "name": t.Function.Name, "description": t.Function.Description,
			"parameters": t.Function.Parameters, "strict": t.Function.Strict})
	}
	var toolChoice any = "auto"
	if tc := gp.ToolChoice; tc != nil {
		toolChoice = tc.Mode
		if tc.Mode == "function" {
			toolChoice = map[string]any{"type": "function", "name": tc.Name}
		}
	}
	format := map[string]any{"type": "text"}
	if rf := gp.ResponseFormat; rf != nil {
		format = map[string]any{"type": rf.Type}
		if js := rf.JSONSchema; js != nil {
			format = map[string]any{"type": rf.Type, "name": js.Name, "schema": js.Schema, "strict": js.Strict, "description": js.Description}
		}
	}
	var reasoning any
	if gp.ReasoningEffort != "" {
		reasoning = map[string]any{"effort": gp.ReasoningEffort, "summary": nil}
	}
	return map[string]any{
		"id": r.ID, "object": "response", "created_at": r.CreatedAt, "status": status, "background": r.Background,
		"model": model, "output": output, "usage": usage, "error": errObj, "incomplete_details": nil,
		"instructions": instructions, "previous_response_id": previous, "metadata": meta, "user": user,
		"max_output_tokens": r.MaxOutputTokens, "temperature": r.Temperature, "top_p": r.TopP, "store": r.Store,
		"parallel_tool_calls": gp.ParallelToolCalls == nil || *gp.ParallelToolCalls, "tool_choice": toolChoice, "tools": tools,
		"text": map[string]any{"format": format}, "reasoning": reasoning,
	}
}

// outputItems are a finished reply's output: its text as a message, then
// each tool call as a function_call item.
func outputItems(jobID string, res *store.Result) []any {
	out := []any{}
	if res.Content != "" || len(res.ToolCalls) == 0 {
		out = append(out, messageItem(jobID, "completed", []any{textPart(res.Content)}))
	}
	for k, tc := range res.ToolCalls {
		out = append(out, functionCallItem(jobID, k, "completed", tc.ID, tc.Function.Name, tc.Function.Arguments))
	}
	return out
}

func messageItem(jobID, status string, content []any) map[string]any {
	return map[string]any{"id": msgID(jobID), "type": "message", "status": status, "role": "assistant", "content": content}
}

func textPart(text string) map[string]any {
	return map[string]any{"type": "output_text", "text": text, "annotations": []any{}}
}

func functionCallItem(jobID string, k int, status, callID, name, args string) map[string]any {
	return map[string]any{"id": fcID(jobID, k), "type": "function_call", "status": status, "call_id": callID, "name": name, "arguments": args}
}
