package ethereum

import (
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"testing"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
)

// vectorsDir is where the shared test vectors sit relative to this package:
// the repository is cloned with shared/ beside it.
var vectorsDir = filepath.Join("..", "..", "..", "shared", "vectors")

// loadVectors decodes a vector file, failing (not skipping) when it is
// missing: a silently skipped vector test proves nothing.
func loadVectors(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vectorsDir, name))
	if err != nil {
		t.Fatalf("test vectors missing (expected shared/ beside the repository): %v", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// gethTx builds go-ethereum's view of tx, so go-ethereum can judge our
// hashes and encodings.
func gethTx(tx *Tx) *types.Transaction {
	var to *common.Address
	if tx.To != nil {
		a := common.Address(*tx.To)
		to = &a
	}
	var al types.AccessList
	for _, t := range tx.AccessList {
		keys := make([]common.Hash, len(t.StorageKeys))
		for i, k := range t.StorageKeys {
			keys[i] = common.Hash(k)
		}
		al = append(al, types.AccessTuple{Address: common.Address(t.Address), StorageKeys: keys})
	}
	switch tx.Type {
	case TypeLegacy:
		return types.NewTx(&types.LegacyTx{Nonce: tx.Nonce, GasPrice: tx.GasPrice, Gas: tx.Gas,
			To: to, Value: tx.Value, Data: tx.Data})
	case TypeAccessList:
		return types.NewTx(&types.AccessListTx{ChainID: tx.ChainID, Nonce: tx.Nonce, GasPrice: tx.GasPrice,
			Gas: tx.Gas, To: to, Value: tx.Value, Data: tx.Data, AccessList: al})
	default:
		return types.NewTx(&types.DynamicFeeTx{ChainID: tx.ChainID, Nonce: tx.Nonce,
			GasTipCap: tx.MaxPriorityFeePerGas, GasFeeCap: tx.MaxFeePerGas, Gas: tx.Gas,
			To: to, Value: tx.Value, Data: tx.Data, AccessList: al})
	}
}

// gethSigningHash is go-ethereum's digest for tx on tx's chain.
func gethSigningHash(tx *Tx) [32]byte {
	var chain *big.Int = tx.ChainID
	return types.LatestSignerForChainID(chain).Hash(gethTx(tx))
}
