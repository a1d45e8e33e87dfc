package bitcoin

import (
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
)

// Worst-case sizes of unlocking data, in bytes. A low-S DER signature is at
// most 71 bytes (r may need a 0x00 pad to 33 bytes; low-S s never does, so it
// is at most 32), plus one sighash byte.
const (
	maxSigLen = 72
	// items count, push(sig), push(33-byte compressed key).
	p2wpkhWitnessLen = 1 + 1 + maxSigLen + 1 + 33
	// push(sig), push(33-byte compressed key).
	p2pkhScriptSigLen = 1 + maxSigLen + 1 + 33
	// push(22-byte P2WPKH redeem script).
	p2shP2WPKHScriptSigLen = 1 + 22
)

// estimateVSize returns the finalised transaction's virtual size
// (BIP-141: weight/4 rounded up) and whether every input could be sized.
// Inputs already finalised in the PSBT are sized exactly; ours and the
// common single-key types at their worst case.
func estimateVSize(pkt *psbt.Packet, prevOuts []*wire.TxOut, ours []bool) (int64, bool) {
	// The stripped serialisation already holds one length byte per
	// (empty) scriptSig.
	base := int64(pkt.UnsignedTx.SerializeSizeStripped())
	var scriptSigs, witness int64
	segwit, complete := false, true
	for i := range pkt.UnsignedTx.TxIn {
		pin := &pkt.Inputs[i]
		script := prevOuts[i].PkScript
		switch {
		case !ours[i] && (pin.FinalScriptSig != nil || pin.FinalScriptWitness != nil):
			scriptSigs += scriptSigGrowth(len(pin.FinalScriptSig))
			if pin.FinalScriptWitness != nil {
				witness += int64(len(pin.FinalScriptWitness)) // already a serialised stack
				segwit = true
			} else {
				witness++ // empty stack, if the tx turns out segwit
			}
		case ours[i] || txscript.IsPayToWitnessPubKeyHash(script):
			witness += p2wpkhWitnessLen
			segwit = true
		case txscript.IsPayToPubKeyHash(script):
			scriptSigs += scriptSigGrowth(p2pkhScriptSigLen)
			witness++
		case txscript.IsPayToScriptHash(script) && txscript.IsPayToWitnessPubKeyHash(pin.RedeemScript):
			scriptSigs += scriptSigGrowth(p2shP2WPKHScriptSigLen)
			witness += p2wpkhWitnessLen
			segwit = true
		default:
			// A P2WSH or bare P2SH spend's size depends on scripts and
			// signatures we cannot predict.
			complete = false
			witness++
		}
	}
	weight := (base + scriptSigs) * 4
	if segwit {
		weight += 2 + witness // marker and flag bytes, then the witnesses, at weight 1
	}
	return (weight + 3) / 4, complete
}

// scriptSigGrowth is how much a scriptSig of n bytes adds to a stripped
// serialisation that already counted an empty one (one length byte).
func scriptSigGrowth(n int) int64 {
	return int64(wire.VarIntSerializeSize(uint64(n))) - 1 + int64(n)
}
