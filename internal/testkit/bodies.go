package testkit

import (
	"fmt"
	"strings"
)

// LargeToolsBody is a Chat Completions request for model with n tools,
// each with a JSON Schema of just under 64 KiB (string properties with
// descriptions): 65 KB a tool. With 128 tools (about 8.4 MB) it is the
// largest request the API takes by its tools.
func LargeToolsBody(model string, n int) []byte {
	prop := func(p int) string {
		return fmt.Sprintf(`"p%d":{"type":"string","description":"%s"}`, p, strings.Repeat("d", 100))
	}
	var props []string
	for p, size := 0, 0; size+len(prop(p))+200 <= 64<<10; p++ {
		props = append(props, prop(p))
		size += len(prop(p)) + 1
	}
	schema := `{"type":"object","properties":{` + strings.Join(props, ",") + `}}`
	tools := make([]string, n)
	for i := range tools {
		tools[i] = fmt.Sprintf(`{"type":"function","function":{"name":"tool_%d","description":"a tool","parameters":%s}}`, i, schema)
	}
	return []byte(`{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"tools":[` + strings.Join(tools, ",") + `]}`)
}
