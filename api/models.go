package api

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/models"
)

// set is the model list in force: it changes when the models file is edited.
func (s *Server) set() *models.Set {
	if s.opt.Models == nil {
		return &models.Set{Legacy: true}
	}
	return s.opt.Models()
}

// modelNames are the names /v1/models lists: the public models, or, before
// the models file, the allowed models (CHATFLEET_MODELS), else the default.
func (s *Server) modelNames() []string {
	set := s.set()
	switch {
	case !set.Legacy:
		return set.Names()
	case len(s.opt.Allowed) > 0:
		return s.opt.Allowed
	}
	return []string{set.Default}
}

// defaultModel is the model a request that names none gets.
func (s *Server) defaultModel() string { return s.set().Default }

// served reports whether a request may name model ("" is the default):
// a public model, or, before the models file, any allowed name.
func (s *Server) served(model string) bool {
	set := s.set()
	if set.Legacy {
		return model == "" || len(s.opt.Allowed) == 0 || slices.Contains(s.opt.Allowed, model)
	}
	_, ok := set.Lookup(model)
	return ok
}

// unknownModel is the refusal of a model that is not served, as the
// jobs API (422) and the OpenAI doors (404 model_not_found) put it.
func (s *Server) unknownModel(model string, openai bool) error {
	if openai {
		return errf(http.StatusNotFound, "model_not_found", "model", fmt.Sprintf("the model %q does not exist or you do not have access to it", model))
	}
	return invalid("model", fmt.Sprintf("%q is not a served model (%s)", model, strings.Join(s.modelNames(), ", ")))
}

// kinds are the provider kinds that may answer a request for model: its
// deployments' and its fallbacks'.
func (s *Server) kinds(model string) []string {
	set := s.set()
	m, ok := set.Lookup(model)
	if !ok {
		return nil
	}
	var out []string
	add := func(m models.Model) {
		for _, d := range m.Deployments {
			if !slices.Contains(out, d.Provider) {
				out = append(out, d.Provider)
			}
		}
	}
	add(m)
	for _, f := range m.Fallbacks {
		if fm, ok := set.Lookup(f); ok && !set.Legacy {
			add(fm)
		}
	}
	return out
}

func (s *Server) listModels(c echo.Context) error {
	names := s.modelNames()
	data := make([]any, 0, len(names))
	for _, m := range names {
		data = append(data, modelObject(m))
	}
	return c.JSON(http.StatusOK, map[string]any{"object": "list", "data": data})
}

// getModel answers models.retrieve: a listed model, else 404 model_not_found.
func (s *Server) getModel(c echo.Context) error {
	name := c.Param("*") // a name may hold a slash (org/model)
	if !slices.Contains(s.modelNames(), name) {
		return s.unknownModel(name, true)
	}
	return c.JSON(http.StatusOK, modelObject(name))
}

func modelObject(name string) map[string]any {
	return map[string]any{"id": name, "object": "model", "created": 0, "owned_by": "chatfleet"}
}
