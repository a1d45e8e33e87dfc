package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/custodysigner/appliance/internal/api"
	"github.com/custodysigner/appliance/internal/app"
	"github.com/custodysigner/appliance/internal/client"
)

// clientFlags binds the connection flags shared by the officer commands.
func clientFlags(fs *flag.FlagSet, o *client.Options) {
	fs.StringVar(&o.URL, "url", "", "appliance URL (APPLIANCE_URL; default https://127.0.0.1:8443)")
	fs.StringVar(&o.Cert, "tls-cert", "", "your client certificate (APPLIANCE_CERT)")
	fs.StringVar(&o.Key, "tls-key", "", "its private key (APPLIANCE_KEY)")
	fs.StringVar(&o.CA, "ca", "", "CA of the appliance's server certificate (APPLIANCE_CA)")
}

func newClient(name string, args []string, bind func(*flag.FlagSet)) (*client.Client, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var o client.Options
	clientFlags(fs, &o)
	if bind != nil {
		bind(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, usageError{fmt.Sprintf("%s: %v", name, err)}
	}
	o.FromEnv()
	return client.New(o)
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// unsealCmd submits one share read from a file (never from the command
// line, where it would land in shell history and the process list).
func unsealCmd(args []string, out io.Writer) error {
	var shareFile string
	c, err := newClient("unseal", args, func(fs *flag.FlagSet) { fs.StringVar(&shareFile, "share-file", "", "your share") })
	if err != nil {
		return err
	}
	if shareFile == "" {
		return usageError{"unseal: --share-file is required"}
	}
	raw, err := os.ReadFile(shareFile)
	if err != nil {
		return err
	}
	body := &shareBody{share: bytes.TrimSpace(raw)}
	var res map[string]any
	err = c.Do(context.Background(), "POST", "/v1/unseal", body, &res)
	clear(raw)
	body.wipe()
	if err != nil {
		return err
	}
	return printJSON(out, res)
}

// shareBody is the /v1/unseal request built from the share file's bytes,
// so that this process never holds the share as a Go string (which could
// not be zeroed). What remains outside its control: encoding/json's and
// the HTTP client's copies of the marshalled body (a short-lived process,
// hardened against dumps).
type shareBody struct {
	share []byte // a sub-slice of the file's bytes
	json  []byte // what MarshalJSON made
}

// MarshalJSON writes {"share":"..."}. A share is printable ASCII without
// quotes or backslashes; anything else is refused here, without echoing it.
func (b *shareBody) MarshalJSON() ([]byte, error) {
	for _, c := range b.share {
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return nil, errors.New("the share file holds characters no share has")
		}
	}
	b.json = make([]byte, 0, len(b.share)+len(`{"share":""}`))
	b.json = append(b.json, `{"share":"`...)
	b.json = append(b.json, b.share...)
	b.json = append(b.json, `"}`...)
	return b.json, nil
}

// wipe zeroes the share and the JSON made from it.
func (b *shareBody) wipe() {
	clear(b.share)
	clear(b.json)
}

func freezeCmd(args []string, out io.Writer) error {
	var reason string
	c, err := newClient("freeze", args, func(fs *flag.FlagSet) { fs.StringVar(&reason, "reason", "", "why (recorded)") })
	if err != nil {
		return err
	}
	if reason == "" {
		return usageError{"freeze: --reason is required"}
	}
	var res map[string]any
	if err := c.Do(context.Background(), "POST", "/v1/freeze", map[string]string{"reason": reason}, &res); err != nil {
		return err
	}
	return printJSON(out, res)
}

func proposeCmd(args []string, out io.Writer) error {
	var kind, params string
	c, err := newClient("propose", args, func(fs *flag.FlagSet) {
		fs.StringVar(&kind, "kind", "", "unfreeze, create_key, grant_key, revoke_key, add_principal, remove_principal, add_officer, remove_officer")
		fs.StringVar(&params, "params", "{}", "parameters as JSON")
	})
	if err != nil {
		return err
	}
	var res map[string]any
	body := map[string]any{"kind": kind, "params": json.RawMessage(params)}
	if err := c.Do(context.Background(), "POST", "/v1/proposals", body, &res); err != nil {
		return err
	}
	return printJSON(out, res)
}

// approveCmd shows what is being approved, in words, and signs its digest
// with the officer's Ed25519 approval key.
func approveCmd(args []string, in io.Reader, out io.Writer) error {
	var id, keyFile string
	var yes bool
	c, err := newClient("approve", args, func(fs *flag.FlagSet) {
		fs.StringVar(&id, "request", "", "proposal id")
		fs.StringVar(&keyFile, "key", "", "your Ed25519 approval key (PKCS#8 PEM)")
		fs.BoolVar(&yes, "yes", false, "do not ask for confirmation")
	})
	if err != nil {
		return err
	}
	if id == "" || keyFile == "" {
		return usageError{"approve: --request and --key are required"}
	}
	priv, err := app.LoadApprovalKey(keyFile)
	if err != nil {
		return err
	}
	defer clear(priv)
	ctx := context.Background()
	if strings.HasPrefix(id, "req_") {
		return approveRequest(ctx, c, id, priv, yes, in, out)
	}
	var p api.ProposalBody
	if err := c.Do(ctx, "GET", "/v1/proposals/"+id, nil, &p); err != nil {
		return err
	}
	fmt.Fprintf(out, "Proposal %s by %s\n  %s\n  state %s, %d of %d approvals, expires %s\n  digest %s\n",
		p.ID, p.Proposer, describe(p.Kind, p.Params), p.State, len(p.Approvals), p.ApprovalsRequired, p.ExpiresAt.Format(time.RFC3339), p.Digest)
	if !yes {
		fmt.Fprint(out, "Approve? Type yes: ")
		var answer string
		if _, err := fmt.Fscanln(in, &answer); err != nil || answer != "yes" {
			return fmt.Errorf("not approved")
		}
	}
	digest, err := hex.DecodeString(p.Digest)
	if err != nil {
		return fmt.Errorf("digest from the appliance: %w", err)
	}
	sig := ed25519.Sign(priv, digest)
	var res api.ProposalBody
	if err := c.Do(ctx, "POST", "/v1/proposals/"+id+"/approvals", map[string]string{"signature": base64.StdEncoding.EncodeToString(sig)}, &res); err != nil {
		return err
	}
	fmt.Fprintf(out, "approved: %s is %s (%d of %d)%s\n", res.ID, res.State, len(res.Approvals), res.ApprovalsRequired, suffix(res.Result))
	return nil
}

// approveRequest shows a pending signing request's decoded intent and signs
// its digest.
func approveRequest(ctx context.Context, c *client.Client, id string, priv ed25519.PrivateKey, yes bool, in io.Reader, out io.Writer) error {
	var r api.RequestBody
	if err := c.Do(ctx, "GET", "/v1/requests/"+id, nil, &r); err != nil {
		return err
	}
	intent, _ := json.MarshalIndent(r.Intent, "  ", "  ")
	fmt.Fprintf(out, "Signing request %s by %s with key %s (%s %s)\n  %s\n  state %s, %d of %d approvals\n  digest %s\n",
		r.ID, r.Principal, r.KeyID, r.Chain, r.Network, intent, r.State, len(r.Approvals), r.ApprovalsRequired, r.Digest)
	if !yes {
		fmt.Fprint(out, "Approve? Type yes: ")
		var answer string
		if _, err := fmt.Fscanln(in, &answer); err != nil || answer != "yes" {
			return fmt.Errorf("not approved")
		}
	}
	digest, err := hex.DecodeString(r.Digest)
	if err != nil {
		return fmt.Errorf("digest from the appliance: %w", err)
	}
	var res api.RequestBody
	body := map[string]string{"signature": base64.StdEncoding.EncodeToString(ed25519.Sign(priv, digest))}
	if err := c.Do(ctx, "POST", "/v1/requests/"+id+"/approvals", body, &res); err != nil {
		return err
	}
	fmt.Fprintf(out, "approved: %s is %s (%d of %d)\n", res.ID, res.State, len(res.Approvals), res.ApprovalsRequired)
	return nil
}

func suffix(result string) string {
	if result == "" {
		return ""
	}
	return ": " + result
}

// describe puts a proposal in words.
func describe(kind string, raw json.RawMessage) string {
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	s := func(k string) string { v, _ := m[k].(string); return v }
	switch kind {
	case "unfreeze":
		return "UNFREEZE the appliance (reason: " + s("reason") + ")"
	case "create_key":
		return fmt.Sprintf("CREATE KEY %q (%s %s %s) in the HSM", s("id"), s("algorithm"), s("chain"), s("network"))
	case "grant_key":
		return fmt.Sprintf("GRANT key %q to %s", s("key_id"), s("principal"))
	case "revoke_key":
		return fmt.Sprintf("REVOKE key %q from %s", s("key_id"), s("principal"))
	case "add_principal":
		return fmt.Sprintf("ADD PRINCIPAL %s with roles %v and keys %v", s("name"), m["roles"], m["keys"])
	case "remove_principal":
		return "REMOVE PRINCIPAL " + s("name")
	case "add_officer":
		return "ADD OFFICER " + s("name") + " with a new approval key"
	case "remove_officer":
		return "REMOVE OFFICER " + s("name")
	case "set_policy":
		rules, _ := json.Marshal(m["rules"])
		return fmt.Sprintf("SET POLICY of key %q to %s", s("key_id"), rules)
	case "allowlist_add":
		return fmt.Sprintf("ALLOWLIST %s for key %q, effective at once", s("address"), s("key_id"))
	default:
		return kind + " " + string(raw)
	}
}

// requestsCmd lists pending requests or shows one, with its decoded intent.
func requestsCmd(args []string, out io.Writer) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "show") {
		return usageError{"requests list [--state S] | requests show --request ID"}
	}
	var state, id string
	c, err := newClient("requests "+args[0], args[1:], func(fs *flag.FlagSet) {
		fs.StringVar(&state, "state", "pending_approval", "state to list")
		fs.StringVar(&id, "request", "", "request id to show")
	})
	if err != nil {
		return err
	}
	var res any
	path := "/v1/requests?state=" + url.QueryEscape(state)
	if args[0] == "show" {
		if id == "" {
			return usageError{"requests show: --request is required"}
		}
		path = "/v1/requests/" + url.PathEscape(id)
	}
	if err := c.Do(context.Background(), "GET", path, nil, &res); err != nil {
		return err
	}
	return printJSON(out, res)
}
