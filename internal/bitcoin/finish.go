package bitcoin

import (
	"bytes"
	"encoding/hex"
	"fmt"

	"github.com/btcsuite/btcd/btcec/v2"
	"github.com/btcsuite/btcd/btcec/v2/ecdsa"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
)

// SignatureLen is the length of a signature as the HSM returns it: r || s,
// 32 bytes each, big-endian (PKCS#11 CKM_ECDSA output).
const SignatureLen = 64

// Finish adds the HSM's signatures (one 64-byte r||s per Digest, in the same
// order) to the PSBT as partial signatures: strict DER, low-S, followed by
// the sighash byte, under the compressed public key. When every input is
// either ours or already finalised by someone else, it finalises ours,
// extracts the transaction, checks each of our inputs with btcd's script
// engine, and returns its hex and txid; otherwise rawTxHex and txid are "".
//
// High-S signatures are normalised rather than refused: for Bitcoin the
// flip is harmless and required for relay. Every signature is verified
// against the key before use, so a faulty signer cannot yield a PSBT that
// looks signed but is not. Errors wrap ErrSignature (or ErrDecode if the
// stored PSBT no longer parses, which would be a bug).
//
// Finish does not modify p and may be called again.
func (p *Prepared) Finish(sigs [][]byte) (psbtBase64, rawTxHex, txid string, err error) {
	if len(sigs) != len(p.Digests) {
		return "", "", "", fmt.Errorf("%w: got %d signatures for %d digests", ErrSignature, len(sigs), len(p.Digests))
	}
	pub, err := btcec.ParsePubKey(p.pubKey)
	if err != nil {
		return "", "", "", fmt.Errorf("%w: %w", ErrPublicKeyInvalid, err)
	}
	pkt, err := parsePSBT(p.raw)
	if err != nil {
		return "", "", "", err
	}
	upd, err := psbt.NewUpdater(pkt)
	if err != nil {
		return "", "", "", fmt.Errorf("%w: %w", ErrDecode, err)
	}
	for k, d := range p.Digests {
		der, err := derSignature(sigs[k], d.Hash[:], pub)
		if err != nil {
			return "", "", "", fmt.Errorf("signature %d (input %d): %w", k, d.Input, err)
		}
		// A native P2WPKH input has exactly one possible signer, us; a
		// signature already there is stale or junk and would only make
		// btcd refuse a duplicate key or a second signature.
		pkt.Inputs[d.Input].PartialSigs = nil
		if _, err := upd.Sign(d.Input, append(der, byte(d.SigHash)), p.pubKey, nil, nil); err != nil {
			return "", "", "", fmt.Errorf("%w: input %d: %w", ErrSignature, d.Input, err)
		}
	}

	complete := true
	for i := range p.ours {
		complete = complete && (p.ours[i] || p.foreignFin[i])
	}
	if complete {
		for _, d := range p.Digests {
			if err := psbt.Finalize(pkt, d.Input); err != nil {
				return "", "", "", fmt.Errorf("%w: finalising input %d: %w", ErrSignature, d.Input, err)
			}
		}
		tx, err := psbt.Extract(pkt)
		if err != nil {
			return "", "", "", fmt.Errorf("%w: extracting transaction: %w", ErrSignature, err)
		}
		if err := p.verify(tx); err != nil {
			return "", "", "", err
		}
		var buf bytes.Buffer
		if err := tx.Serialize(&buf); err != nil {
			return "", "", "", fmt.Errorf("%w: serialising transaction: %w", ErrSignature, err)
		}
		rawTxHex, txid = hex.EncodeToString(buf.Bytes()), tx.TxHash().String()
	}
	psbtBase64, err = pkt.B64Encode()
	if err != nil {
		return "", "", "", fmt.Errorf("%w: encoding PSBT: %w", ErrDecode, err)
	}
	return psbtBase64, rawTxHex, txid, nil
}

// derSignature turns the HSM's r||s into a strict-DER, low-S signature and
// verifies it over digest.
func derSignature(sig, digest []byte, pub *btcec.PublicKey) ([]byte, error) {
	if len(sig) != SignatureLen {
		return nil, fmt.Errorf("%w: want %d bytes r||s, got %d", ErrSignature, SignatureLen, len(sig))
	}
	var r, s btcec.ModNScalar
	if r.SetByteSlice(sig[:32]) || r.IsZero() {
		return nil, fmt.Errorf("%w: r is zero or not below the group order", ErrSignature)
	}
	if s.SetByteSlice(sig[32:]) || s.IsZero() {
		return nil, fmt.Errorf("%w: s is zero or not below the group order", ErrSignature)
	}
	if s.IsOverHalfOrder() {
		s.Negate()
	}
	es := ecdsa.NewSignature(&r, &s)
	if !es.Verify(digest, pub) {
		return nil, fmt.Errorf("%w: does not verify against the signing key", ErrSignature)
	}
	return es.Serialize(), nil
}

// verify runs each of our inputs of the final transaction through btcd's
// script engine with the standard (relay) rule set, so a transaction is
// only ever returned in a form the network would accept from us.
func (p *Prepared) verify(tx *wire.MsgTx) error {
	fetcher := txscript.NewMultiPrevOutFetcher(nil)
	for i, in := range tx.TxIn {
		fetcher.AddPrevOut(in.PreviousOutPoint, p.prevOuts[i])
	}
	hashes := txscript.NewTxSigHashes(tx, fetcher)
	for _, d := range p.Digests {
		prev := p.prevOuts[d.Input]
		vm, err := txscript.NewEngine(prev.PkScript, tx, d.Input, txscript.StandardVerifyFlags, nil, hashes, prev.Value, fetcher)
		if err == nil {
			err = vm.Execute()
		}
		if err != nil {
			return fmt.Errorf("%w: input %d fails script verification: %w", ErrSignature, d.Input, err)
		}
	}
	return nil
}
