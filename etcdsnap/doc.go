// Package etcdsnap takes verified etcd snapshots that know which keys can
// read them, produces the EncryptionConfiguration that restores them, and
// counts stored objects by storage prefix (the census).
//
// # Snapshots
//
// [Client.Save] streams a snapshot from one etcd member into a [Store]
// ("<name>.db", written as "<name>.db.part", fsynced, then published under
// its name, mode 0600), checks the sha256 etcd appends to the stream itself
// (the etcd client only checks that 32 bytes are there), and writes a
// [Manifest] beside it ("<name>.json"): when and why it was taken, the Git
// and etcd revisions, the keyring version and, for every key deployed at
// that moment, its name, provider and fingerprint, never the key. Before the
// first byte is read, Save records in the keystore ([KeyRefs]) that the
// snapshot needs those keys, so they outlive no snapshot they can read.
//
// [List], [Verify], [Prune] and [Remove] manage what is stored; Prune keeps
// the newest N snapshots and any the caller still needs (the one taken
// before a transition that has not finished), and the snapshot taken after
// a change ([ReasonAfter]) while it is the newest, uncounted; it releases
// the key references of the ones it removes.
//
// # The drill
//
// [Drill] proves a snapshot restorable without restoring it: it opens the
// file read-only as etcd's bolt database, takes the newest revision of
// every key under the covered resources, decrypts each value with the keys
// the manifest names ([KeySource]) through k8s.io/apiserver's transformers,
// and checks each plaintext is a Kubernetes object of its name. The
// [DrillReport] counts objects per resource and storage prefix, says what
// Vault gave for each key, and names every object that fails; it is stored
// beside the snapshot ([WriteDrillReport]).
//
// # Restore
//
// [RestoreConfig] fetches the keys a snapshot references ([KeySource]) and
// renders the EncryptionConfiguration that reads every object in it;
// [WriteRestoreConfig] writes it 0600; [RestoreInstructions] tells the
// operator how to restore with etcdutl (etcd 3.5+), etcdctl (etcd 3.4) or
// RKE and where the config goes.
//
// # Census
//
// [Client.Census] reads the stored values of each resource with paginated
// range reads and counts them by [cluster.StoragePrefix]: the proof that a
// rewrite reached every object and that a key is no longer needed.
//
// # CLI wiring
//
// The atrest snapshot commands map onto this package:
//
//	atrest snapshot save       Dial, then Client.Save(ctx, store, keystore, Manifest{Reason: "manual", ...})
//	atrest snapshot list       List(ctx, store)
//	atrest snapshot verify N   Verify(ctx, store, N)
//	atrest snapshot verify --decrypt N
//	                           Drill(ctx, store, N, keystore, opts), WriteDrillReport(ctx, store, report)
//	atrest snapshot remove N   Remove(ctx, store, keystore, cluster, N)
//	atrest snapshot restore-config N --out PATH [--overwrite]
//	                           ReadManifest(ctx, store, N), Verify(ctx, store, N),
//	                           RestoreConfig(ctx, m, keystore), WriteRestoreConfig(PATH, data, overwrite),
//	                           print RestoreInstructionsIn(store, m, PATH)
//
// with store = NewLocalDir(settings.Snapshots.Dir) and Config from
// settings.Etcd (Endpoints, CAFile, CertFile, KeyFile). keystore.Store
// implements KeyRefs and KeySource. Errors from Verify wrap ErrVerify:
// exit non-zero and say the snapshot must not be used.
package etcdsnap
