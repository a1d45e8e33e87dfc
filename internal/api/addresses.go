package api

import (
	"errors"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/custodysigner/appliance/internal/address"
	"github.com/custodysigner/appliance/internal/apierr"
)

type validateBody struct {
	Chain   string `json:"chain"`
	Network string `json:"network"`
	Address string `json:"address"`
}

// validateAddress answers {valid, normalized, type, reason, known_risk}.
// An invalid address is a 200 with valid=false: the question was answered.
func (s *Server) validateAddress(c echo.Context) error {
	var b validateBody
	if err := decodeJSON(c, &b); err != nil {
		return err
	}
	if b.Chain == "" || b.Address == "" {
		return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "chain and address are required")
	}
	r, err := address.Validate(b.Chain, b.Network, b.Address, s.deps.Screener)
	if errors.Is(err, address.ErrUnknownChain) {
		return apierr.Wrap(err, http.StatusUnprocessableEntity, apierr.CodeUnsupported, "%v", err)
	}
	if err != nil {
		return apierr.Wrap(err, http.StatusUnprocessableEntity, apierr.CodeWrongNetwork, "%v", err)
	}
	return c.JSON(http.StatusOK, r)
}
