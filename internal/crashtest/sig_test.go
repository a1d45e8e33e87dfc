package crashtest

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"
)

// verifySignature checks an answer with the chains' reference libraries,
// not the appliance's code: the signed transaction is exactly the requested
// one, and its signature is valid for the key.
//
// Ethereum (go-ethereum): the sender recovered from the signature is the
// key's address (types.Sender also refuses high-S signatures), the signing
// hash of the signed transaction is keccak256 of the requested payload (so
// every field is the requested one), and tx_hash is its hash.
//
// Bitcoin (btcd): the signed transaction has the PSBT's txid (same inputs
// and outputs), and its witness satisfies the key's P2WPKH output under
// btcd's script engine with the standard verification flags.
func (h *harness) verifySignature(e *entry, a signAnswer) error {
	switch e.req.Chain {
	case "ethereum":
		raw, err := hexutil.Decode(a.SignedTx)
		if err != nil {
			return fmt.Errorf("signed_tx: %w", err)
		}
		var tx types.Transaction
		if err := tx.UnmarshalBinary(raw); err != nil {
			return fmt.Errorf("signed_tx does not decode: %w", err)
		}
		signer := types.LatestSignerForChainID(big.NewInt(chainID))
		from, err := types.Sender(signer, &tx)
		if err != nil {
			return fmt.Errorf("no sender recovers from the signature: %w", err)
		}
		if from != h.ethAddr {
			return fmt.Errorf("signed by %s, not by the key's address %s", from, h.ethAddr)
		}
		payload, err := hexutil.Decode(e.req.Payload)
		if err != nil {
			return fmt.Errorf("payload: %w", err)
		}
		if signer.Hash(&tx) != crypto.Keccak256Hash(payload) {
			return errors.New("the signed transaction is not the requested payload")
		}
		if tx.Hash().Hex() != a.TxHash {
			return fmt.Errorf("tx_hash %s, but the signed transaction hashes to %s", a.TxHash, tx.Hash().Hex())
		}
	case "bitcoin":
		pkt, err := psbt.NewFromRawBytes(strings.NewReader(e.req.Payload), true)
		if err != nil {
			return fmt.Errorf("the requested PSBT: %w", err)
		}
		raw, err := hex.DecodeString(a.SignedTx)
		if err != nil {
			return fmt.Errorf("signed_tx: %w", err)
		}
		var tx wire.MsgTx
		if err := tx.Deserialize(bytes.NewReader(raw)); err != nil {
			return fmt.Errorf("signed_tx does not decode: %w", err)
		}
		if tx.TxHash() != pkt.UnsignedTx.TxHash() {
			return fmt.Errorf("the signed transaction %s is not the requested one %s", tx.TxHash(), pkt.UnsignedTx.TxHash())
		}
		if tx.TxHash().String() != a.TxID {
			return fmt.Errorf("txid %s, but the signed transaction is %s", a.TxID, tx.TxHash())
		}
		if len(pkt.Inputs) != 1 || len(tx.TxIn) != 1 || pkt.Inputs[0].WitnessUtxo == nil {
			return errors.New("want one input with its witness UTXO")
		}
		prev := pkt.Inputs[0].WitnessUtxo
		if !bytes.Equal(prev.PkScript, h.btcScript) {
			return errors.New("the input does not spend the key's P2WPKH output")
		}
		fetch := txscript.NewCannedPrevOutputFetcher(prev.PkScript, prev.Value)
		vm, err := txscript.NewEngine(prev.PkScript, &tx, 0, txscript.StandardVerifyFlags, nil,
			txscript.NewTxSigHashes(&tx, fetch), prev.Value, fetch)
		if err != nil {
			return err
		}
		if err := vm.Execute(); err != nil {
			return fmt.Errorf("the witness does not satisfy the key's script: %w", err)
		}
	default:
		return fmt.Errorf("chain %q", e.req.Chain)
	}
	return nil
}
