package probe
import (
 _ "github.com/ethereum/go-ethereum/ethclient/simulated"
 _ "github.com/ethereum/go-ethereum/core/types"
 _ "github.com/ethereum/go-ethereum/crypto"
 _ "github.com/ThalesGroup/crypto11"
 _ "github.com/labstack/echo/v4"
 _ "github.com/mattn/go-sqlite3"
 _ "github.com/coreos/go-systemd/v22/daemon"
 _ "go.uber.org/zap"
 _ "github.com/decred/dcrd/dcrec/secp256k1/v4"
 _ "golang.org/x/crypto/sha3"
 _ "gopkg.in/yaml.v3"
 _ "github.com/miekg/pkcs11"
 _ "github.com/btcsuite/btcd/btcutil/psbt"
 _ "github.com/btcsuite/btcd/txscript"
)
