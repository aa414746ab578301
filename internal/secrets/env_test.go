package secrets

import (
	"errors"
	"testing"
)

func TestEnvReadsVariable(t *testing.T) {
	t.Setenv("PERIMETER_TEST_GH", "ghp_value")
	e := NewEnv(map[string]string{"github": "PERIMETER_TEST_GH"})
	got, err := e.Get(t.Context(), "github")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "ghp_value" {
		t.Errorf("Get = %q, want ghp_value", got)
	}

	t.Setenv("PERIMETER_TEST_GH", "ghp_rotated")
	if got, _ := e.Get(t.Context(), "github"); string(got) != "ghp_rotated" {
		t.Errorf("Get after the variable changed = %q, want ghp_rotated", got)
	}
}

func TestEnvMissingIsNotFound(t *testing.T) {
	t.Setenv("PERIMETER_TEST_EMPTY", "")
	e := NewEnv(map[string]string{"unset": "PERIMETER_TEST_UNSET_5d1c", "empty": "PERIMETER_TEST_EMPTY"})
	for name, want := range map[string]string{
		"unset":        `secret "unset": environment variable PERIMETER_TEST_UNSET_5d1c is not set: secret not found`,
		"empty":        `secret "empty": environment variable PERIMETER_TEST_EMPTY is empty: secret not found`,
		"unconfigured": `secret "unconfigured": no source is configured for it: secret not found`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := e.Get(t.Context(), name)
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get: %v, want ErrNotFound", err)
			}
			if err.Error() != want {
				t.Errorf("error = %q\nwant    %q", err, want)
			}
		})
	}
}

func TestEnvKeepsItsOwnCopyOfTheMap(t *testing.T) {
	t.Setenv("PERIMETER_TEST_A", "a")
	vars := map[string]string{"a": "PERIMETER_TEST_A"}
	e := NewEnv(vars)
	delete(vars, "a")
	if _, err := e.Get(t.Context(), "a"); err != nil {
		t.Errorf("Get after the caller changed its map: %v", err)
	}
}

func TestMultiRoutesByName(t *testing.T) {
	t.Setenv("PERIMETER_TEST_NPM", "npm_value")
	m := Multi{
		"npm":    NewEnv(map[string]string{"npm": "PERIMETER_TEST_NPM"}),
		"github": &fakeSource{values: map[string]string{"github": "gh_value"}},
	}
	for name, want := range map[string]string{"npm": "npm_value", "github": "gh_value"} {
		if got, err := m.Get(t.Context(), name); err != nil || string(got) != want {
			t.Errorf("Get(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
	if _, err := m.Get(t.Context(), "pypi"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of an unrouted name: %v, want ErrNotFound", err)
	}
}
