package controlplane

import (
	"path"
	"slices"
	"strconv"
	"strings"
)

// kube-apiserver flags atrest reads or changes.
const (
	flagProviderConfig  = "encryption-provider-config"
	flagAutomaticReload = "encryption-provider-config-automatic-reload"
	flagFeatureGates    = "feature-gates"
	flagEtcdPrefix      = "etcd-prefix"
)

// boolFlags take no separate value: "--name" or "--name=false", never
// "--name false" (pflag's rule for boolean flags).
var boolFlags = []string{flagAutomaticReload}

// lookupFlag returns the value of --name in args, written "--name=value"
// or, for a non-boolean flag, "--name value". As with pflag, the last
// occurrence wins. A bare boolean flag has the value "true".
func lookupFlag(args []string, name string) (value string, found bool) {
	long := "--" + name
	isBool := slices.Contains(boolFlags, name)
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return value, found // what follows is not flags
		case strings.HasPrefix(a, long+"="):
			value, found = strings.TrimPrefix(a, long+"="), true
		case a == long && isBool:
			value, found = "true", true
		case a == long && i+1 < len(args):
			value, found = args[i+1], true
			i++
		case a == long:
			value, found = "", true
		}
	}
	return value, found
}

// boolFlag reports whether the boolean flag --name is on in args.
func boolFlag(args []string, name string) bool {
	v, found := lookupFlag(args, name)
	if !found {
		return false
	}
	on, err := strconv.ParseBool(v)
	return err == nil && on
}

// setFlag returns a copy of args with --name=value in place of the first
// occurrence of --name, other occurrences removed, or at the end when
// there was none: the rest of the command line keeps its order.
func setFlag(args []string, name, value string) []string {
	out := make([]string, 0, len(args)+1)
	placed := false
	forEachArg(args, name, func(arg []string, isFlag bool) {
		switch {
		case !isFlag:
			out = append(out, arg...)
		case !placed:
			out = append(out, "--"+name+"="+value)
			placed = true
		}
	})
	if !placed {
		out = append(out, "--"+name+"="+value)
	}
	return out
}

// removeFlag returns a copy of args without any occurrence of --name (and
// its separate value).
func removeFlag(args []string, name string) []string {
	out := make([]string, 0, len(args))
	forEachArg(args, name, func(arg []string, isFlag bool) {
		if !isFlag {
			out = append(out, arg...)
		}
	})
	return out
}

// forEachArg walks args in order, calling fn with each argument, or with
// an occurrence of --name and its separate value together (isFlag true).
func forEachArg(args []string, name string, fn func(arg []string, isFlag bool)) {
	long := "--" + name
	isBool := slices.Contains(boolFlags, name)
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			fn(args[i:], false)
			return
		case strings.HasPrefix(a, long+"="), a == long && isBool:
			fn(args[i:i+1], true)
		case a == long && i+1 < len(args):
			fn(args[i:i+2], true)
			i++
		case a == long:
			fn(args[i:i+1], true)
		default:
			fn(args[i:i+1], false)
		}
	}
}

// containerPath maps a path on the node to where a container sees it,
// through the container's bind mounts (the most specific one wins); ""
// when no mount covers it. RKE binds PREFIX/etc/kubernetes at
// /etc/kubernetes, so with prefix_path the file's path on the node and the
// flag's value differ.
func containerPath(mounts []mount, hostPath string) string {
	return throughMounts(mounts, hostPath, func(m mount) (string, string) { return m.Source, m.Destination })
}

// throughMounts maps p from one side of the container's bind mounts to
// the other: sides gives a mount's (from, to). The mount whose from side
// is longest wins, since it is the most specific (on the node) or hides
// the others below it (in the container). "" when no bind mount covers p.
func throughMounts(mounts []mount, p string, sides func(mount) (from, to string)) string {
	best, bestLen := "", -1
	for _, m := range mounts {
		if m.Type != "" && m.Type != "bind" {
			continue
		}
		from, to := sides(m)
		from = path.Clean(from)
		var rest string
		switch {
		case p == from:
			rest = ""
		case from == "/":
			rest = strings.TrimPrefix(p, "/")
		case strings.HasPrefix(p, from+"/"):
			rest = strings.TrimPrefix(p, from+"/")
		default:
			continue
		}
		if len(from) > bestLen {
			best, bestLen = path.Join(to, rest), len(from)
		}
	}
	return best
}

// mount is one mount of a container, as inspect reports it.
type mount struct {
	Type        string
	Source      string
	Destination string
}
