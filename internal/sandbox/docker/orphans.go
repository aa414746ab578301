package docker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// RemoveOrphans removes the sandbox containers a worker left behind when it
// crashed: those labelled with workerID, or every Perimeter sandbox
// container when workerID is empty. Size-bounded workspaces of the removed
// containers get their files back. It returns how many containers it
// removed. The worker calls it at start, before creating any sandbox: it
// would also remove that worker's live ones.
func (r *Runtime) RemoveOrphans(ctx context.Context, workerID string) (int, error) {
	f := filters.NewArgs(filters.Arg("label", sandbox.LabelSession))
	if workerID != "" {
		f.Add("label", sandbox.LabelWorker+"="+workerID)
	}
	list, err := r.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return 0, fmt.Errorf("docker: list sandbox containers: %w", err)
	}
	removed := 0
	var errs []error
	for _, c := range list {
		log := r.log.With(slog.String("container", shortID(c.ID)), slog.String("session_id", c.Labels[sandbox.LabelSession]),
			slog.String("worker", c.Labels[sandbox.LabelWorker]))
		var workspace string
		for _, m := range c.Mounts {
			if m.Destination == containerWorkspace {
				workspace = m.Source
			}
		}
		if err := r.removeContainer(ctx, c.ID, 0); err != nil {
			errs = append(errs, err)
			continue
		}
		removed++
		log.Info("removed an orphaned sandbox container")
		if img := c.Labels[LabelWorkspaceFS]; img != "" && workspace != "" {
			if err := recoverWorkspace(ctx, workspace, img, log); err != nil && !cerrdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("recover the workspace of container %s: %w", shortID(c.ID), err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("docker: remove orphaned sandboxes: %w", err)
	}
	return removed, nil
}
