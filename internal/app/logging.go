package app

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/custodysigner/appliance/internal/config"
)

// NewLogger builds the process logger: JSON in production, a readable
// console format in dev.
func NewLogger(c config.Log) (*zap.Logger, error) {
	log, _, err := NewLoggerLevel(c)
	return log, err
}

// NewLoggerLevel is NewLogger that also returns the level, which a
// configuration reload changes in place (App.SetLogLevel).
func NewLoggerLevel(c config.Log) (*zap.Logger, zap.AtomicLevel, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, zap.AtomicLevel{}, fmt.Errorf("log.level: %w", err)
	}
	var zc zap.Config
	if c.Format == "console" {
		zc = zap.NewDevelopmentConfig()
		zc.Development = false
		zc.DisableStacktrace = true
	} else {
		zc = zap.NewProductionConfig()
		zc.EncoderConfig.TimeKey = "time"
		zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
		zc.Sampling = nil // every request line is evidence; never drop one
	}
	zc.Level = zap.NewAtomicLevelAt(level)
	log, err := zc.Build()
	return log, zc.Level, err
}
