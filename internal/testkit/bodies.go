package testkit

import (
	"fmt"
	"strings"
)

// LargeToolsBody is the largest Chat Completions request the API takes by
// its tools: 128 tools, each with a JSON Schema of just under 64 KiB
// (string properties with descriptions), about 8.4 MB.
func LargeToolsBody() []byte {
	prop := func(p int) string {
		return fmt.Sprintf(`"p%d":{"type":"string","description":"%s"}`, p, strings.Repeat("d", 100))
	}
	var props []string
	for p, size := 0, 0; size+len(prop(p))+200 <= 64<<10; p++ {
		props = append(props, prop(p))
		size += len(prop(p)) + 1
	}
	schema := `{"type":"object","properties":{` + strings.Join(props, ",") + `}}`
	tools := make([]string, 128)
	for i := range tools {
		tools[i] = fmt.Sprintf(`{"type":"function","function":{"name":"tool_%d","description":"a tool","parameters":%s}}`, i, schema)
	}
	return []byte(`{"model":"chatfleet","messages":[{"role":"user","content":"hi"}],"tools":[` + strings.Join(tools, ",") + `]}`)
}
