package ethereum

import (
	"encoding/hex"
	"encoding/json"
	"math/big"
	"testing"
)

// benchPayloads are the two shapes that reach the signing path most: a
// plain EIP-1559 value transfer and an EIP-1559 ERC-20 transfer (USDC
// contract, 68 bytes of calldata), both for mainnet with realistic fees.
func benchPayloads(tb testing.TB) (transfer, erc20 []byte) {
	tb.Helper()
	to, err := ParseAddress("0x00000000219ab540356cBB839Cbe05303d7705Fa")
	if err != nil {
		tb.Fatal(err)
	}
	token, err := ParseAddress("0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48")
	if err != nil {
		tb.Fatal(err)
	}
	base := Tx{Type: TypeDynamicFee, ChainID: big.NewInt(1), Nonce: 4711,
		MaxPriorityFeePerGas: big.NewInt(1_500_000_000), MaxFeePerGas: big.NewInt(42_000_000_000), Gas: 21000,
		To: &to, Value: new(big.Int).Mul(big.NewInt(1_234_567), big.NewInt(1_000_000_000_000))}
	tokenTx := base
	tokenTx.To, tokenTx.Value, tokenTx.Gas = &token, big.NewInt(0), 65000
	tokenTx.Data, _ = hex.DecodeString("a9059cbb" +
		"000000000000000000000000" + "1111111111111111111111111111111111111111" +
		"00000000000000000000000000000000000000000000000000000002540be400") // 10,000 USDC
	for _, tx := range []*Tx{&base, &tokenTx} {
		if err := tx.Validate(); err != nil {
			tb.Fatal(err)
		}
	}
	return base.UnsignedPayload(), tokenTx.UnsignedPayload()
}

// prepareLike is what the signing service does with an Ethereum payload
// before it records the request (internal/signing prepareEthereum): decode,
// check the ERC-20 arguments, build and encode the intent, hash for signing.
func prepareLike(b *testing.B, payload []byte, wantKind string) {
	tx, err := DecodeUnsigned(payload)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := tx.TokenCall(); err != nil {
		b.Fatal(err)
	}
	in := tx.Intent()
	if in.Kind != wantKind {
		b.Fatalf("kind %s, want %s", in.Kind, wantKind)
	}
	if _, err := json.Marshal(in); err != nil {
		b.Fatal(err)
	}
	if h := tx.SigningHash(); h == ([32]byte{}) {
		b.Fatal("zero signing hash")
	}
	_ = tx.Destinations()
}

// BenchmarkEthereumPrepare measures the whole per-request decode path for
// each shape, and each step of it for the plain transfer.
func BenchmarkEthereumPrepare(b *testing.B) {
	transfer, erc20 := benchPayloads(b)
	b.Run("transfer", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			prepareLike(b, transfer, KindTransfer)
		}
	})
	b.Run("erc20_transfer", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			prepareLike(b, erc20, KindERC20Transfer)
		}
	})
	b.Run("transfer/decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeUnsigned(transfer); err != nil {
				b.Fatal(err)
			}
		}
	})
	tx, err := DecodeUnsigned(transfer)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("transfer/intent_json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(tx.Intent()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("transfer/signing_hash", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = tx.SigningHash()
		}
	})
}
