package reconciler

import "github.com/atrest-io/atrest/cluster"

// DesiredFrom resolves what cluster.yml and the policy ask for at revision.
// rotate_encryption_key in the file requests one rotation per commit.
func DesiredFrom(cfg *cluster.Config, policy *cluster.Policy, revision string) Desired {
	d := Desired{Mode: cfg.Desired.Mode, Provider: policy.Provider, Revision: revision, EtcdPrefix: cfg.EtcdPrefix(),
		Schedule: policy.Schedule, Retention: policy.Retention}
	d.ScheduleGap, _ = policy.MinRotationGap()
	if cfg.Desired.Mode == cluster.Custom {
		d.Custom = cfg.Desired.Custom.Chains()
		d.CustomConfig = cfg.Desired.Custom
	}
	if cfg.RotateEncryptionKey && revision != "" {
		d.RotateRequest = "commit:" + revision
	}
	return d
}
