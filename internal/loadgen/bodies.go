package loadgen

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"

	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/wire"

	"github.com/custodysigner/appliance/internal/bitcoin"
	"github.com/custodysigner/appliance/internal/ethereum"
)

// signBody is POST /v1/sign's request, exactly the fields the API decodes
// (it refuses unknown ones).
type signBody struct {
	KeyID          string `json:"key_id"`
	Chain          string `json:"chain"`
	Network        string `json:"network"`
	Payload        string `json:"payload"`
	IdempotencyKey string `json:"idempotency_key"`
}

// bodySource makes request bodies, each with a payload and an idempotency
// key never used before (the appliance keeps every key it has seen).
type bodySource interface {
	build(n int) ([][]byte, error)
}

// ethSource makes EIP-1559 transfers of a small value to a fixed address,
// with increasing nonces.
type ethSource struct {
	keyID   string
	chainID *big.Int
	to      ethereum.Address
	value   *big.Int
	tag     string // unique per load generator run
	nonce   uint64
}

// Bench transaction parameters: 1 gwei tip, 30 gwei fee cap, a plain
// transfer's gas, 1e12 wei (0.000001 ETH) each.
var (
	ethTip    = big.NewInt(1_000_000_000)
	ethFeeCap = big.NewInt(30_000_000_000)
	ethValue  = big.NewInt(1_000_000_000_000)
)

const ethGas = 21_000

// EthDestination is where the bench's Ethereum transfers go (not on any
// known-risk list).
const EthDestination = "0x1111111111111111111111111111111111111111"

func newEthSource(keyID string, chainID int64, tag string) (*ethSource, error) {
	to, err := ethereum.ParseAddress(EthDestination)
	if err != nil {
		return nil, err
	}
	return &ethSource{keyID: keyID, chainID: big.NewInt(chainID), to: to, value: ethValue, tag: tag}, nil
}

func (s *ethSource) build(n int) ([][]byte, error) {
	out := make([][]byte, n)
	for i := range out {
		tx := ethereum.Tx{
			Type: ethereum.TypeDynamicFee, ChainID: s.chainID, Nonce: s.nonce,
			MaxPriorityFeePerGas: ethTip, MaxFeePerGas: ethFeeCap, Gas: ethGas,
			To: &s.to, Value: s.value,
		}
		if err := tx.Validate(); err != nil {
			return nil, err
		}
		b, err := json.Marshal(signBody{
			KeyID: s.keyID, Chain: "ethereum", Network: s.chainID.String(),
			Payload:        "0x" + hex.EncodeToString(tx.UnsignedPayload()),
			IdempotencyKey: fmt.Sprintf("lg-%s-eth-%d", s.tag, s.nonce),
		})
		if err != nil {
			return nil, err
		}
		out[i] = b
		s.nonce++
	}
	return out, nil
}

// btcSource makes one-input P2WPKH PSBTs (v0) spending an output of the
// key: half to a fixed foreign address, the rest less the fee back to the
// key as change. Each input carries its full previous transaction and the
// witness UTXO, as the appliance requires. The previous transactions are
// made up (each spends a distinct fictitious outpoint, so every PSBT is a
// different transaction); the appliance checks their consistency, not the
// chain.
type btcSource struct {
	keyID   string
	network string
	own     []byte // P2WPKH script of the key
	dest    []byte // script of the destination
	tag     string
	seq     uint64
}

// Bench PSBT amounts, in satoshi: a 100,000 sat coin, 50,000 to the
// destination, 1,000 fee (about 7 sat/vB), the rest back as change.
const (
	btcCoin = 100_000
	btcPay  = 50_000
	btcFee  = 1_000
)

// BTCDestinationProgram is the witness program (hash160) of the bench's
// fixed foreign P2WPKH destination.
var BTCDestinationProgram = [20]byte{0xb1, 0xe7, 0xc4, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01}

func newBTCSource(keyID, network string, pub65 []byte, tag string) (*btcSource, error) {
	own, err := bitcoin.P2WPKHScript(pub65)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", keyID, err)
	}
	dest := append([]byte{0x00, 0x14}, BTCDestinationProgram[:]...)
	return &btcSource{keyID: keyID, network: network, own: own, dest: dest, tag: tag}, nil
}

func (s *btcSource) build(n int) ([][]byte, error) {
	out := make([][]byte, n)
	for i := range out {
		prev := wire.NewMsgTx(2)
		var seed [8]byte
		binary.BigEndian.PutUint64(seed[:], s.seq)
		fict := chainhash.Hash(sha256.Sum256(append([]byte(s.tag), seed[:]...)))
		prev.AddTxIn(wire.NewTxIn(wire.NewOutPoint(&fict, 0), nil, nil))
		prev.AddTxOut(wire.NewTxOut(btcCoin, s.own))
		prevHash := prev.TxHash()
		pkt, err := psbt.New(
			[]*wire.OutPoint{wire.NewOutPoint(&prevHash, 0)},
			[]*wire.TxOut{wire.NewTxOut(btcPay, s.dest), wire.NewTxOut(btcCoin-btcPay-btcFee, s.own)},
			2, 0, []uint32{wire.MaxTxInSequenceNum - 2})
		if err != nil {
			return nil, err
		}
		pkt.Inputs[0].NonWitnessUtxo = prev
		pkt.Inputs[0].WitnessUtxo = wire.NewTxOut(btcCoin, s.own)
		b64, err := pkt.B64Encode()
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(signBody{
			KeyID: s.keyID, Chain: "bitcoin", Network: s.network, Payload: b64,
			IdempotencyKey: fmt.Sprintf("lg-%s-btc-%d", s.tag, s.seq),
		})
		if err != nil {
			return nil, err
		}
		out[i] = b
		s.seq++
	}
	return out, nil
}
