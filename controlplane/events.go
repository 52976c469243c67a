package controlplane

import (
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
)

// EventRecorder records Kubernetes events on the canary secret: the
// object atrest writes through every node, so `kubectl get events -n
// kube-system` shows them beside it. client-go's broadcaster aggregates
// repeats (a patch of the event's count) and rate-limits a flood; a write
// the API refuses is logged, never returned: events are a view, and must
// not stop a transition.
type EventRecorder struct {
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
	ref         *corev1.ObjectReference
}

// NewEventRecorder starts recording through cfg's API server, as the
// component atrest on host; stop it with Shutdown.
func NewEventRecorder(cfg *rest.Config, host string, log *slog.Logger) (*EventRecorder, error) {
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kc.CoreV1().Events("")})
	b.StartEventWatcher(func(e *corev1.Event) {
		log.Debug("event", "type", e.Type, "reason", e.Reason, "message", e.Message)
	})
	return &EventRecorder{
		broadcaster: b,
		recorder:    b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "atrest", Host: host}),
		ref:         &corev1.ObjectReference{APIVersion: "v1", Kind: "Secret", Namespace: CanaryNamespace, Name: CanaryName},
	}, nil
}

// Event records one event; eventType is corev1.EventTypeNormal or
// corev1.EventTypeWarning, reason a stable CamelCase word.
func (r *EventRecorder) Event(eventType, reason, message string) {
	r.recorder.Event(r.ref, eventType, reason, message)
}

// Shutdown stops recording; events still queued may be dropped.
func (r *EventRecorder) Shutdown() { r.broadcaster.Shutdown() }
