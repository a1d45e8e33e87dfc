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

	"github.com/custodysigner/appliance/internal/secp"
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
// against the key before use (ErrSignatureInvalid when it does not), so a
// faulty signer cannot yield a PSBT that looks signed but is not; callers
// need not verify them first. A complete transaction is then judged by
// btcd's script engine, which verifies each signature once more,
// independently. Errors wrap ErrSignature (or ErrDecode if the stored PSBT
// no longer parses, which would be a bug).
//
// Finish does not modify p and may be called again.
func (p *Prepared) Finish(sigs [][]byte) (psbtBase64, rawTxHex, txid string, err error) {
	if len(sigs) != len(p.Digests) {
		return "", "", "", fmt.Errorf("%w: got %d signatures for %d digests", ErrSignature, len(sigs), len(p.Digests))
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
		der, err := p.derSignature(sigs[k], d.Hash[:])
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
// verifies it over digest against the key with internal/secp's single
// double-scalar multiplication (through the key's prepared verifier when
// Prepare was given one): a third of decred's Verify, or less.
func (p *Prepared) derSignature(sig, digest []byte) ([]byte, error) {
	if len(sig) != SignatureLen {
		return nil, fmt.Errorf("%w: %w: want %d bytes r||s, got %d", ErrSignature, ErrSignatureInvalid, SignatureLen, len(sig))
	}
	var r, s btcec.ModNScalar
	if r.SetByteSlice(sig[:32]) || r.IsZero() {
		return nil, fmt.Errorf("%w: %w: r is zero or not below the group order", ErrSignature, ErrSignatureInvalid)
	}
	if s.SetByteSlice(sig[32:]) || s.IsZero() {
		return nil, fmt.Errorf("%w: %w: s is zero or not below the group order", ErrSignature, ErrSignatureInvalid)
	}
	if s.IsOverHalfOrder() {
		s.Negate()
	}
	var low [SignatureLen]byte
	r.PutBytesUnchecked(low[:32])
	s.PutBytesUnchecked(low[32:])
	var err error
	if p.verifier != nil {
		_, err = p.verifier.VerifyAndParity(digest, low[:])
	} else {
		_, err = secp.VerifyAndParity(p.pub65, digest, low[:])
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w: %w", ErrSignature, ErrSignatureInvalid, err)
	}
	return ecdsa.NewSignature(&r, &s).Serialize(), nil
}

// verify runs each of our inputs of the final transaction through btcd's
// script engine with the standard (relay) rule set, so a transaction is
// only ever returned in a form the network would accept from us. It is the
// independent judge: it computes each sighash itself and verifies each
// signature again, with decred's code rather than internal/secp's.
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
