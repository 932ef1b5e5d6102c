package wiring

import (
	"errors"
	"testing"

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/config"
	"github.com/chatfleet/chatfleet/models"
)

func oneModel(name, provider string, price *models.Price) *models.Set {
	return &models.Set{Default: name, Models: []models.Model{{Name: name, Price: price,
		Deployments: []models.Deployment{{ID: name + "-1", Provider: provider, Model: "m", Weight: 1}}}}}
}

// An edit of the models file brings its prices and default model with it;
// a list a part cannot take, or a simulated deployment in production, is
// refused and the list in force stays.
func TestModelListTakesAnEditWhole(t *testing.T) {
	cfg := config.Config{ModelsFile: "models.yaml", ModelSet: oneModel("alpha", "openai", nil),
		ModelPrices: map[string]config.Price{"alpha": {Input: 1, Output: 2}}}
	l := NewModelList(cfg, func(string) string { return "" }, zerolog.Nop())
	if p := l.Prices()["alpha"]; p != [2]float64{1, 2} || l.Default() != "alpha" {
		t.Fatalf("start: prices %v, default %q", l.Prices(), l.Default())
	}
	if err := l.apply(oneModel("beta", "openai", &models.Price{Input: 3, Output: 4})); err != nil {
		t.Fatal(err)
	}
	if p := l.Prices()["beta"]; p != [2]float64{3, 4} || l.Default() != "beta" || l.Prices()["alpha"] != [2]float64{1, 2} {
		t.Fatalf("after the edit: prices %v, default %q", l.Prices(), l.Default())
	}

	l.OnChange(func(*models.Set) error { return errors.New("the router could not take it") })
	if err := l.apply(oneModel("gamma", "openai", nil)); err == nil || l.Default() != "beta" {
		t.Fatalf("a list a part refused: %v, default %q; want it refused and beta kept", err, l.Default())
	}

	cfg.Env = config.EnvProduction
	l = NewModelList(cfg, func(string) string { return "" }, zerolog.Nop())
	if err := l.apply(oneModel("sim-model", "sim", nil)); err == nil || l.Default() != "alpha" {
		t.Fatalf("a sim deployment in production: %v, default %q; want it refused", err, l.Default())
	}
}
