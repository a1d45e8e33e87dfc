package bitcoin

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"

	"github.com/custodysigner/appliance/internal/secp"
)

// Options says who signs and what the policy lets them sign.
type Options struct {
	// Network is the network the request names; it selects how output
	// scripts are rendered as addresses.
	Network Network
	// PublicKey is the signing key as the HSM returns it: 65-byte
	// uncompressed SEC1. Inputs paying P2WPKH of its compressed form are
	// ours.
	PublicKey []byte
	// AllowedSighash lists the sighash types the policy allows. Empty means
	// only SIGHASH_ALL: other types let someone else change the outputs or
	// add inputs after we sign.
	AllowedSighash []txscript.SigHashType
	// IsOwnScript reports whether an output script pays one of the
	// appliance's own keys, so the intent can mark it as change. May be nil;
	// an output to this key's own P2WPKH script is change either way.
	IsOwnScript func(script []byte) bool
	// Verifier, when set, is a prepared verifier of PublicKey (faster for
	// a key that signs often); Finish checks signatures with it. A verifier
	// of another key is ignored.
	Verifier *secp.Verifier
}

// Intent is what the transaction does, in the terms policy and approvers
// reason about.
type Intent struct {
	Kind    string   `json:"kind"` // always "transfer"
	Network string   `json:"network"`
	Inputs  []Input  `json:"inputs"`
	Outputs []Output `json:"outputs"`
	// TotalIn, TotalOut and Fee are in satoshis. TotalIn comes from each
	// input's full previous transaction, never from the witness UTXO alone.
	TotalIn  int64 `json:"total_in"`
	TotalOut int64 `json:"total_out"`
	Fee      int64 `json:"fee"`
	// VSize estimates the finalised transaction's virtual size in vbytes.
	// Signatures are counted at their largest low-S DER size, so when
	// VSizeComplete is true VSize is an upper bound (by at most one vbyte
	// per input) and FeeRateSatVB a lower bound of the on-chain rate.
	VSize int64 `json:"vsize"`
	// VSizeComplete is false when a foreign input's unlocking data cannot
	// be sized (an unfinalised P2WSH or P2SH input, say); VSize then leaves
	// it out and FeeRateSatVB is higher than the real rate.
	VSizeComplete bool    `json:"vsize_complete"`
	FeeRateSatVB  float64 `json:"fee_rate_sat_vb"`
}

// Input is one spent output.
type Input struct {
	Index   int    `json:"index"`
	PrevOut string `json:"prev_out"` // "txid:vout"
	Amount  int64  `json:"amount"`
	Address string `json:"address,omitempty"` // empty when the previous script has no address form
	Type    string `json:"type"`
	Ours    bool   `json:"ours"` // true when this key signs it
}

// Output is one created output.
type Output struct {
	Index   int    `json:"index"`
	Address string `json:"address,omitempty"` // empty for nulldata
	Type    string `json:"type"`
	Amount  int64  `json:"amount"`
	Change  bool   `json:"change"` // pays this key or, per Options.IsOwnScript, another of ours
}

// Digest is one BIP-143 signature hash for the HSM to sign.
type Digest struct {
	Input   int
	Hash    [32]byte
	SigHash txscript.SigHashType // the type committed to; appended to the DER signature
}

// Prepared is a decoded, validated PSBT ready for signing.
type Prepared struct {
	Intent  Intent
	Digests []Digest // one per input of ours, in input order

	// raw is the PSBT as received; Finish parses it afresh so it can run
	// more than once (retries, idempotent replays) without shared state.
	raw        []byte
	pubKey     []byte         // compressed, as it goes into partial signatures and witnesses
	pub65      []byte         // uncompressed, as Finish verifies against it
	verifier   *secp.Verifier // of pub65, or nil
	prevOuts   []*wire.TxOut
	ours       []bool
	foreignFin []bool // foreign inputs already finalised by someone else
}

// Prepare decodes a base64 PSBT v0, checks every input's previous output
// against its full previous transaction, and returns the intent and the
// BIP-143 digests of the inputs paying P2WPKH of opts.PublicKey.
//
// Refusals: ErrDecode (not a PSBT, amounts out of range, outputs exceed
// inputs), ErrUnsupported (PSBT v2, taproot inputs, non-standard or
// value-burning outputs, odd fields on our inputs), ErrMissingUTXO,
// ErrUTXOMismatch, ErrNotOurs, ErrSighash, and option errors
// (ErrUnknownNetwork, ErrPublicKeyInvalid).
func Prepare(psbtBase64 string, opts Options) (*Prepared, error) {
	if _, err := Params(opts.Network); err != nil {
		return nil, err
	}
	pubKey, err := compressedKey(opts.PublicKey)
	if err != nil {
		return nil, err
	}
	ourScript, err := witnessScript(0, btcutil.Hash160(pubKey))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPublicKeyInvalid, err)
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(psbtBase64)
	if err != nil {
		return nil, fmt.Errorf("%w: base64: %w", ErrDecode, err)
	}
	pkt, err := parsePSBT(raw)
	if err != nil {
		return nil, err
	}
	tx := pkt.UnsignedTx
	if len(tx.TxIn) == 0 || len(tx.TxOut) == 0 {
		return nil, fmt.Errorf("%w: transaction has %d inputs and %d outputs (want at least one of each)", ErrDecode, len(tx.TxIn), len(tx.TxOut))
	}

	p := &Prepared{
		raw:        raw,
		pubKey:     pubKey,
		pub65:      bytes.Clone(opts.PublicKey),
		prevOuts:   make([]*wire.TxOut, len(tx.TxIn)),
		ours:       make([]bool, len(tx.TxIn)),
		foreignFin: make([]bool, len(tx.TxIn)),
		Intent:     Intent{Kind: "transfer", Network: string(opts.Network)},
	}
	if opts.Verifier != nil && bytes.Equal(opts.Verifier.PublicKey(), opts.PublicKey) {
		p.verifier = opts.Verifier
	}
	seen := make(map[wire.OutPoint]bool, len(tx.TxIn))
	for i, txIn := range tx.TxIn {
		op := txIn.PreviousOutPoint
		if seen[op] {
			return nil, fmt.Errorf("%w: input %d spends %s twice", ErrDecode, i, op)
		}
		seen[op] = true
		prev, err := previousOutput(i, txIn, &pkt.Inputs[i])
		if err != nil {
			return nil, err
		}
		if prev.Value < 0 || prev.Value > btcutil.MaxSatoshi {
			return nil, fmt.Errorf("%w: input %d amount %d out of range", ErrDecode, i, prev.Value)
		}
		p.Intent.TotalIn += prev.Value // at most 2^32 inputs * 2.1e15: cannot overflow int64
		p.prevOuts[i] = prev
		in := Input{Index: i, PrevOut: op.Hash.String() + ":" + strconv.FormatUint(uint64(op.Index), 10), Amount: prev.Value}
		// The previous script is rendered for information only; a
		// non-standard one is no reason to refuse spending it.
		in.Address, in.Type, _ = AddressFromScript(prev.PkScript, opts.Network)
		in.Ours = bytes.Equal(prev.PkScript, ourScript)
		p.ours[i] = in.Ours
		pin := &pkt.Inputs[i]
		p.foreignFin[i] = !in.Ours && (pin.FinalScriptSig != nil || pin.FinalScriptWitness != nil)
		p.Intent.Inputs = append(p.Intent.Inputs, in)
	}
	if !slices.Contains(p.ours, true) {
		return nil, fmt.Errorf("%w: none of the %d inputs pays P2WPKH of the signing key", ErrNotOurs, len(tx.TxIn))
	}

	if err := p.decodeOutputs(tx, ourScript, opts); err != nil {
		return nil, err
	}
	if p.Intent.TotalOut > p.Intent.TotalIn {
		return nil, fmt.Errorf("%w: outputs (%d sat) exceed inputs (%d sat)", ErrDecode, p.Intent.TotalOut, p.Intent.TotalIn)
	}
	p.Intent.Fee = p.Intent.TotalIn - p.Intent.TotalOut
	p.Intent.VSize, p.Intent.VSizeComplete = estimateVSize(pkt, p.prevOuts, p.ours)
	p.Intent.FeeRateSatVB = float64(p.Intent.Fee) / float64(p.Intent.VSize)

	allowed := opts.AllowedSighash
	if len(allowed) == 0 {
		allowed = []txscript.SigHashType{txscript.SigHashAll}
	}
	hashes := sigHashes(tx, p.prevOuts)
	for i := range tx.TxIn {
		if !p.ours[i] {
			continue
		}
		pin := &pkt.Inputs[i]
		if err := checkOurInput(i, pin); err != nil {
			return nil, err
		}
		sighash := pin.SighashType
		if sighash == 0 {
			sighash = txscript.SigHashAll // BIP-174: absent means the signer's default
		}
		if !standardSighash(sighash) || !slices.Contains(allowed, sighash) {
			return nil, fmt.Errorf("%w: input %d asks for sighash 0x%02x", ErrSighash, i, uint32(sighash))
		}
		d, err := p2wpkhDigest(tx, hashes, p.prevOuts[i], i, sighash)
		if err != nil {
			return nil, err
		}
		p.Digests = append(p.Digests, d)
	}
	return p, nil
}

// parsePSBT parses raw PSBT bytes with btcd, refusing anything but v0.
func parsePSBT(raw []byte) (pkt *psbt.Packet, err error) {
	// btcd's parser is not written for hostile input; a panic in it must
	// become a refusal, never a crashed request (invariant: no panic on
	// any input).
	defer func() {
		if r := recover(); r != nil {
			pkt, err = nil, fmt.Errorf("%w: parser panicked: %v", ErrDecode, r)
		}
	}()
	pkt, err = psbt.NewFromRawBytes(bytes.NewReader(raw), false)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	// btcd keeps PSBT_GLOBAL_VERSION (0xFB) as an unknown; a non-zero
	// version means fields we would silently ignore.
	for _, u := range pkt.Unknowns {
		if len(u.Key) == 1 && u.Key[0] == 0xFB {
			if len(u.Value) != 4 || binary.LittleEndian.Uint32(u.Value) != 0 {
				return nil, fmt.Errorf("%w: PSBT version %x (only v0 is supported)", ErrUnsupported, u.Value)
			}
		}
	}
	return pkt, nil
}

// previousOutput returns the output input i spends, taken from the full
// previous transaction and cross-checked against the witness UTXO.
//
// Why both: BIP-143 signs the amount of the input being signed only, so a
// PSBT whose witness UTXO under-states one input's amount can trick a signer
// into paying a huge fee across two signing rounds (CVE-2020-14199). Only the
// full previous transaction, hashed to the outpoint's txid, proves amounts.
func previousOutput(i int, txIn *wire.TxIn, pin *psbt.PInput) (*wire.TxOut, error) {
	var prev *wire.TxOut
	if pin.NonWitnessUtxo != nil {
		op := txIn.PreviousOutPoint
		if pin.NonWitnessUtxo.TxHash() != op.Hash {
			return nil, fmt.Errorf("%w: input %d: previous transaction hashes to %s, input spends %s",
				ErrUTXOMismatch, i, pin.NonWitnessUtxo.TxHash(), op.Hash)
		}
		if int64(op.Index) >= int64(len(pin.NonWitnessUtxo.TxOut)) {
			return nil, fmt.Errorf("%w: input %d spends output %d of a transaction with %d outputs",
				ErrUTXOMismatch, i, op.Index, len(pin.NonWitnessUtxo.TxOut))
		}
		prev = pin.NonWitnessUtxo.TxOut[op.Index]
	}
	if pin.WitnessUtxo != nil && prev != nil &&
		(pin.WitnessUtxo.Value != prev.Value || !bytes.Equal(pin.WitnessUtxo.PkScript, prev.PkScript)) {
		return nil, fmt.Errorf("%w: input %d: witness UTXO says %d sat to %x, previous transaction says %d sat to %x",
			ErrUTXOMismatch, i, pin.WitnessUtxo.Value, pin.WitnessUtxo.PkScript, prev.Value, prev.PkScript)
	}
	script := []byte(nil)
	switch {
	case prev != nil:
		script = prev.PkScript
	case pin.WitnessUtxo != nil:
		script = pin.WitnessUtxo.PkScript
	default:
		return nil, fmt.Errorf("%w: input %d has neither a witness UTXO nor its previous transaction", ErrMissingUTXO, i)
	}
	// Checked before the missing previous transaction so the caller learns
	// the real reason: BIP-371 PSBTs legitimately omit it for taproot.
	if txscript.IsPayToTaproot(script) {
		return nil, fmt.Errorf("%w: input %d spends a taproot (P2TR) output; a key-path spend needs a BIP-340 Schnorr signature, which PKCS#11 HSMs do not offer, so the appliance cannot sign or vouch for it", ErrUnsupported, i)
	}
	if prev == nil {
		return nil, fmt.Errorf("%w: input %d lacks its full previous transaction (required to prove segwit amounts, CVE-2020-14199)", ErrMissingUTXO, i)
	}
	// A witness (or possibly wrapped-witness) spend must also say so in the
	// witness UTXO, as BIP-174 asks of segwit inputs.
	if pin.WitnessUtxo == nil && (txscript.IsWitnessProgram(script) || txscript.IsPayToScriptHash(script)) {
		return nil, fmt.Errorf("%w: input %d spends a segwit-capable output but lacks its witness UTXO", ErrMissingUTXO, i)
	}
	return prev, nil
}

// checkOurInput refuses PSBT fields on one of our inputs that would make
// btcd finalise it as something other than native P2WPKH.
func checkOurInput(i int, pin *psbt.PInput) error {
	switch {
	case pin.FinalScriptSig != nil || pin.FinalScriptWitness != nil:
		return fmt.Errorf("%w: input %d of ours is already finalised", ErrUnsupported, i)
	case pin.RedeemScript != nil || pin.WitnessScript != nil:
		return fmt.Errorf("%w: input %d of ours is native P2WPKH but carries a redeem or witness script", ErrUnsupported, i)
	}
	return nil
}

// standardSighash reports whether t is one of the six segwit v0 sighash
// types; other values are consensus-valid but non-standard.
func standardSighash(t txscript.SigHashType) bool {
	switch t &^ txscript.SigHashAnyOneCanPay {
	case txscript.SigHashAll, txscript.SigHashNone, txscript.SigHashSingle:
		return true
	}
	return false
}

// decodeOutputs fills Intent.Outputs and TotalOut.
func (p *Prepared) decodeOutputs(tx *wire.MsgTx, ourScript []byte, opts Options) error {
	for i, out := range tx.TxOut {
		if out.Value < 0 || out.Value > btcutil.MaxSatoshi {
			return fmt.Errorf("%w: output %d amount %d out of range", ErrDecode, i, out.Value)
		}
		p.Intent.TotalOut += out.Value
		if p.Intent.TotalOut > btcutil.MaxSatoshi {
			return fmt.Errorf("%w: outputs total more than 21 million BTC", ErrDecode)
		}
		addr, typ, err := AddressFromScript(out.PkScript, opts.Network)
		if err != nil {
			return fmt.Errorf("output %d: %w", i, err)
		}
		if typ == TypeNullData && out.Value != 0 {
			return fmt.Errorf("%w: output %d sends %d sat to OP_RETURN, where it is burned", ErrUnsupported, i, out.Value)
		}
		change := bytes.Equal(out.PkScript, ourScript) || (opts.IsOwnScript != nil && opts.IsOwnScript(out.PkScript))
		p.Intent.Outputs = append(p.Intent.Outputs, Output{Index: i, Address: addr, Type: typ, Amount: out.Value, Change: change})
	}
	return nil
}

// sigHashes precomputes BIP-143's shared hashes; prevOuts[i] is what input i
// spends (only taproot sighashes read them, but btcd asks for all).
func sigHashes(tx *wire.MsgTx, prevOuts []*wire.TxOut) *txscript.TxSigHashes {
	fetcher := txscript.NewMultiPrevOutFetcher(nil)
	for i, in := range tx.TxIn {
		fetcher.AddPrevOut(in.PreviousOutPoint, prevOuts[i])
	}
	return txscript.NewTxSigHashes(tx, fetcher)
}

// p2wpkhDigest is the BIP-143 digest for input i spending the P2WPKH output
// prev. Given the P2WPKH scriptPubKey, btcd builds BIP-143's P2PKH-style
// script code (0x1976a914{hash}88ac) itself.
func p2wpkhDigest(tx *wire.MsgTx, hashes *txscript.TxSigHashes, prev *wire.TxOut, i int, sighash txscript.SigHashType) (Digest, error) {
	h, err := txscript.CalcWitnessSigHash(prev.PkScript, hashes, sighash, tx, i, prev.Value)
	if err != nil {
		return Digest{}, fmt.Errorf("%w: input %d sighash: %w", ErrDecode, i, err)
	}
	d := Digest{Input: i, SigHash: sighash}
	copy(d.Hash[:], h)
	return d, nil
}
