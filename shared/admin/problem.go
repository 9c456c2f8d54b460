package admin

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/labstack/echo/v5"

	"troveng.dev/shared/errs"
)

// Problem is an RFC 9457 problem details document that also carries the errs code, so HTTP clients switch
// on the same codes as NATS clients.
type Problem struct {
	Type   string            `json:"type"`
	Title  string            `json:"title"`
	Status int               `json:"status"`
	Detail string            `json:"detail,omitempty"`
	Code   errs.Code         `json:"code"`
	Checks map[string]string `json:"checks,omitempty"` // readiness results, on /readyz
}

func newProblem(status int, code errs.Code, detail string) *Problem {
	return &Problem{Type: "about:blank", Title: http.StatusText(status), Status: status, Detail: detail, Code: code}
}

func (p *Problem) Error() string { return string(p.Code) + ": " + p.Detail }

// StatusCode lets echo's middleware see the status.
func (p *Problem) StatusCode() int { return p.Status }

// problemOf turns any error a handler returns into a problem: coded errors keep their code and message,
// echo's own errors (404, 405, ...) get the nearest code, anything else is Internal with a generic message.
func problemOf(err error) (p *Problem, logIt bool) {
	if errors.As(err, &p) {
		return p, false
	}
	var e *errs.Error
	if errors.As(err, &e) {
		return newProblem(e.Code.Status(), e.Code, e.Message), e.Code == errs.Internal
	}
	var sc echo.HTTPStatusCoder
	if errors.As(err, &sc) && sc.StatusCode() != 0 {
		status := sc.StatusCode()
		code := errs.FromStatus(status)
		if code == errs.Internal && status >= 400 && status < 500 {
			code = errs.BadRequest
		}
		detail := http.StatusText(status)
		var he *echo.HTTPError
		if errors.As(err, &he) && he.Message != "" {
			detail = he.Message
		}
		return newProblem(status, code, detail), status >= 500
	}
	return newProblem(http.StatusInternalServerError, errs.Internal, "internal error; see the service log"), true
}

func (s *Server) handleError(c *echo.Context, err error) {
	if r, _ := echo.UnwrapResponse(c.Response()); r != nil && r.Committed {
		return
	}
	p, logIt := problemOf(err)
	if logIt {
		s.log.Error("admin request failed", "method", c.Request().Method, "path", c.RouteInfo().Path, "error", err)
	}
	b, _ := json.Marshal(p)
	c.Response().Header().Set("Content-Type", "application/problem+json")
	c.Response().WriteHeader(p.Status)
	if c.Request().Method != http.MethodHead {
		_, _ = c.Response().Write(b)
	}
}
