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
// [List], [Verify] and [Prune] manage what is stored; Prune keeps the newest
// N snapshots and any the caller still needs (the one taken before a
// transition that has not finished), and releases the key references of
// the ones it removes.
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
//	atrest snapshot prune      Prune(ctx, store, keystore, cluster, retention, KeepTransitions(journal ids in flight...))
//	atrest snapshot restore-config N --out PATH [--force]
//	                           ReadManifest(ctx, store, N), Verify(ctx, store, N),
//	                           RestoreConfig(ctx, m, keystore), WriteRestoreConfig(PATH, data, force),
//	                           print RestoreInstructionsIn(store, m, PATH)
//	atrest census              Dial, then Client.Census(ctx, prefix, config.Resources(), 0)
//
// with store = NewLocalDir(settings.Snapshots.Dir) and Config from
// settings.Etcd (Endpoints, CAFile, CertFile, KeyFile). keystore.Store
// implements KeyRefs and KeySource. Errors from Verify wrap ErrVerify:
// exit non-zero and say the snapshot must not be used.
package etcdsnap
