// Package providercmds is the CLI side of `openshell provider create|list|get|update|delete`
// and `openshell sandbox provider attach|detach|list`: named credential sets the
// gateway stores encrypted and hands to the supervisors of the sandboxes they are
// attached to (`openshell sandbox create --provider NAME`, or attach). Credential
// values never come back from the gateway; list and get show only the keys. Where the
// credentials may be sent (--host, --header, --allow-wildcard-hosts) travels in the
// provider's config (keys hosts, headers, allow_wildcard_hosts).
package providercmds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/openshell/openshell/api/datamodelv1"
	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/supervisor/credentials"
)

// DialFunc connects to the configured gateway.
type DialFunc func(ctx context.Context) (*grpc.ClientConn, error)

// LookupEnv reads an environment variable (os.LookupEnv; replaced in tests).
type LookupEnv func(key string) (string, bool)

// ParseCredentialFlag parses one --credential value: KEY=VALUE, or KEY alone to read the
// value from the environment variable KEY. KEY must look like an environment variable
// name; the value may contain '='.
func ParseCredentialFlag(s string, lookup LookupEnv) (key, value string, err error) {
	key, value, hasValue := strings.Cut(s, "=")
	if err := checkKey(key); err != nil {
		return "", "", fmt.Errorf("--credential %q: %w", s, err)
	}
	if hasValue {
		return key, value, nil
	}
	v, ok := lookup(key)
	if !ok {
		return "", "", fmt.Errorf("--credential %s: environment variable %s is not set; export it or pass --credential %s=VALUE", key, key, key)
	}
	return key, v, nil
}

func checkKey(k string) error {
	if k == "" {
		return errors.New("the key is empty; write KEY or KEY=VALUE")
	}
	if len(k) > 128 {
		return errors.New("the key is longer than 128 characters")
	}
	for i, r := range k {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return fmt.Errorf("key %q must be an environment variable name (letters, digits, '_', not starting with a digit)", k)
		}
	}
	return nil
}

// Command returns `provider` with create, list, get, update and delete.
func Command(dial DialFunc) *cobra.Command {
	return CommandWithEnv(dial, os.LookupEnv)
}

// CommandWithEnv is Command with the environment lookup used for --credential KEY.
func CommandWithEnv(dial DialFunc, lookup LookupEnv) *cobra.Command {
	root := &cobra.Command{Use: "provider", Short: "Manage providers (credentials injected into sandboxes)"}
	client := clientOf(dial)
	root.AddCommand(createCmd(client, lookup), listCmd(client), getCmd(client), updateCmd(client, lookup), deleteCmd(client))
	return root
}

func clientOf(dial DialFunc) clientFunc {
	return func(ctx context.Context) (pb.OpenShellClient, error) {
		cc, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		return pb.NewOpenShellClient(cc), nil
	}
}

type clientFunc func(ctx context.Context) (pb.OpenShellClient, error)

func checkOutput(o string) error {
	if o != "table" && o != "json" {
		return fmt.Errorf("--output %q is not supported; use table or json", o)
	}
	return nil
}

// rpcError turns a gateway status into its message (the gateway names the fix).
func rpcError(what string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", what, err)
	}
	if st.Code() == codes.Unimplemented {
		return fmt.Errorf("%s: this gateway does not support providers; upgrade it", what)
	}
	return fmt.Errorf("%s: %s", what, st.Message())
}

func createCmd(client clientFunc, lookup LookupEnv) *cobra.Command {
	var name, typ, output string
	var creds, hosts, headers []string
	var wildcard bool
	c := &cobra.Command{
		Use:   "create --name NAME --type TYPE --credential KEY[=VALUE]... [--host HOST]... [--header NAME]... [--allow-wildcard-hosts]",
		Short: "Store a provider's credentials (encrypted) on the gateway",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if name == "" || typ == "" {
				return errors.New("--name and --type are required")
			}
			if len(creds) == 0 {
				return errors.New("at least one --credential KEY[=VALUE] is required")
			}
			p := &datamodelv1.Provider{Metadata: &datamodelv1.ObjectMeta{Name: name}, Type: typ,
				Config: bindingConfig(hosts, headers, wildcard)}
			var err error
			if p.Credentials, err = parseCredentials(creds, lookup); err != nil {
				return err
			}
			ctx := cmd.Context()
			c, err := client(ctx)
			if err != nil {
				return err
			}
			resp, err := c.CreateProvider(ctx, &pb.CreateProviderRequest{Provider: p})
			if err != nil {
				return rpcError("create provider "+name, err)
			}
			return printProviders(cmd.OutOrStdout(), output, []*datamodelv1.Provider{resp.GetProvider()}, false)
		},
	}
	f := c.Flags()
	f.StringVar(&name, "name", "", "provider name")
	f.StringVar(&typ, "type", "", "provider type, e.g. github")
	f.StringArrayVar(&creds, "credential", nil, "KEY=VALUE, or KEY to read the value from the environment variable KEY (repeatable)")
	f.StringArrayVar(&hosts, "host", nil, "host the credentials are for (repeatable); an exact name unless --allow-wildcard-hosts")
	f.StringArrayVar(&headers, "header", nil, "request header the service reads the credentials from (repeatable; default Authorization): placeholders in any other header are refused")
	f.BoolVar(&wildcard, "allow-wildcard-hosts", false, `let --host name "*.example.com" patterns: the credentials then go to every host under the domain`)
	f.StringVarP(&output, "output", "o", "table", "table or json")
	return c
}

func listCmd(client clientFunc) *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "list",
		Short: "List providers (credential keys only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ctx := cmd.Context()
			c, err := client(ctx)
			if err != nil {
				return err
			}
			resp, err := c.ListProviders(ctx, &pb.ListProvidersRequest{})
			if err != nil {
				return rpcError("list providers", err)
			}
			return printProviders(cmd.OutOrStdout(), output, resp.GetProviders(), true)
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return c
}

func getCmd(client clientFunc) *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "get NAME",
		Short: "Show a provider (credential keys only)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ctx := cmd.Context()
			c, err := client(ctx)
			if err != nil {
				return err
			}
			resp, err := c.GetProvider(ctx, &pb.GetProviderRequest{Name: args[0]})
			if err != nil {
				return rpcError("get provider "+args[0], err)
			}
			return printProviders(cmd.OutOrStdout(), output, []*datamodelv1.Provider{resp.GetProvider()}, false)
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return c
}

// parseCredentials reads --credential flags into a map, refusing a key given twice.
func parseCredentials(flags []string, lookup LookupEnv) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range flags {
		k, v, err := ParseCredentialFlag(f, lookup)
		if err != nil {
			return nil, err
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("--credential %s is given twice", k)
		}
		out[k] = v
	}
	return out, nil
}

// bindingConfig is the provider config for --host, --header and
// --allow-wildcard-hosts (nil when none is set).
func bindingConfig(hosts, headers []string, wildcard bool) map[string]string {
	return credentials.Provider{Hosts: hosts, Headers: headers, AllowWildcardHosts: wildcard}.Config()
}

func updateCmd(client clientFunc, lookup LookupEnv) *cobra.Command {
	var typ, output string
	var creds, hosts, headers []string
	var wildcard bool
	c := &cobra.Command{
		Use:   "update NAME [--credential KEY[=VALUE]]... [--host HOST]... [--header NAME]... [--type TYPE]",
		Short: "Change a provider's credentials, hosts, headers or type (unset ones are kept)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			p := &datamodelv1.Provider{Metadata: &datamodelv1.ObjectMeta{Name: args[0]}, Type: typ,
				Config: bindingConfig(hosts, headers, wildcard)}
			if cmd.Flags().Changed("allow-wildcard-hosts") && !wildcard {
				if p.Config == nil {
					p.Config = map[string]string{}
				}
				p.Config[credentials.ConfigAllowWildcardHosts] = "false"
			}
			var err error
			if p.Credentials, err = parseCredentials(creds, lookup); err != nil {
				return err
			}
			if len(p.Credentials) == 0 && len(p.Config) == 0 && typ == "" {
				return errors.New("nothing to update: give --credential, --host, --header, --allow-wildcard-hosts or --type")
			}
			ctx := cmd.Context()
			c, err := client(ctx)
			if err != nil {
				return err
			}
			resp, err := c.UpdateProvider(ctx, &pb.UpdateProviderRequest{Provider: p})
			if err != nil {
				return rpcError("update provider "+args[0], err)
			}
			return printProviders(cmd.OutOrStdout(), output, []*datamodelv1.Provider{resp.GetProvider()}, false)
		},
	}
	f := c.Flags()
	f.StringVar(&typ, "type", "", "new provider type")
	f.StringArrayVar(&creds, "credential", nil, "KEY=VALUE, or KEY to read the value from the environment variable KEY (repeatable); other keys keep their values")
	f.StringArrayVar(&hosts, "host", nil, "replace the hosts the credentials are for (repeatable)")
	f.StringArrayVar(&headers, "header", nil, "replace the request headers that may carry the credentials (repeatable)")
	f.BoolVar(&wildcard, "allow-wildcard-hosts", false, `let --host name "*.example.com" patterns`)
	f.StringVarP(&output, "output", "o", "table", "table or json")
	return c
}

func deleteCmd(client clientFunc) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a provider (refused while a sandbox uses it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := client(ctx)
			if err != nil {
				return err
			}
			if _, err := c.DeleteProvider(ctx, &pb.DeleteProviderRequest{Name: args[0]}); err != nil {
				return rpcError("delete provider "+args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "provider %s deleted\n", args[0])
			return nil
		},
	}
}

var pj = protojson.MarshalOptions{UseProtoNames: true, Multiline: true}

// printProviders writes providers as a table or JSON (a list as an array, one provider as an
// object).
func printProviders(w io.Writer, format string, ps []*datamodelv1.Provider, list bool) error {
	if format == "json" {
		if !list && len(ps) == 1 {
			b, err := pj.Marshal(ps[0])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(w, string(b))
			return err
		}
		parts := make([]string, 0, len(ps))
		for _, p := range ps {
			b, err := pj.Marshal(p)
			if err != nil {
				return err
			}
			parts = append(parts, string(b))
		}
		_, err := fmt.Fprintf(w, "[%s]\n", strings.Join(parts, ",\n"))
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tTYPE\tCREDENTIALS\tHOSTS\tHEADERS\tAGE")
	for _, p := range ps {
		headers := p.GetConfig()[credentials.ConfigHeaders]
		if headers == "" {
			headers = "Authorization"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.GetMetadata().GetName(), p.GetType(), orDash(strings.Join(slices.Sorted(maps.Keys(p.GetCredentials())), ",")),
			orDash(p.GetConfig()[credentials.ConfigHosts]), headers, age(p.GetMetadata().GetCreatedAtMs()))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func age(ms int64) string {
	if ms == 0 {
		return "-"
	}
	d := time.Since(time.UnixMilli(ms)).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
