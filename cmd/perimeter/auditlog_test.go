package main

import (
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/checkpoint"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// Workers sharing a state directory cannot share its audit log or its
// checkpoint store: the second one opens its own, named for it.
func TestASecondWorkerOnAStateDirectoryGetsItsOwnLogAndStore(t *testing.T) {
	logs := &testenv.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	dir := filepath.Join(t.TempDir(), "audit")
	openLog := func(d string) (*audit.Writer, error) { return audit.Open(d, audit.Options{}) }
	first, got, err := openOwn(dir, "w1", "audit log", log, audit.ErrLocked, openLog)
	if err != nil || got != dir {
		t.Fatalf("first worker: %s, %v", got, err)
	}
	defer first.Close()
	second, got, err := openOwn(dir, "w2", "audit log", log, audit.ErrLocked, openLog)
	if err != nil || got != dir+".w2" {
		t.Fatalf("second worker: %s, %v; want %s.w2", got, err, dir)
	}
	defer second.Close()

	cdir := filepath.Join(t.TempDir(), "checkpoints")
	openStore := func(d string) (*checkpoint.Store, error) { return checkpoint.Open(d, checkpoint.Options{}) }
	s1, _, err := openOwn(cdir, "w1", "checkpoint store", log, checkpoint.ErrLocked, openStore)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	s2, got, err := openOwn(cdir, "w2", "checkpoint store", log, checkpoint.ErrLocked, openStore)
	if err != nil || got != cdir+".w2" {
		t.Fatalf("second worker's store: %s, %v", got, err)
	}
	s2.Close()
	if logs.Len() == 0 {
		t.Error("nothing logged about the second worker's own directory")
	}
}
