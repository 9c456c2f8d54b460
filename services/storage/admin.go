package storage

import (
	"net/http"
	"strconv"

	"github.com/labstack/echo/v5"
	"github.com/nats-io/nats.go"

	"troveng.dev/shared/admin"
	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/service"
	"troveng.dev/shared/telemetry"
)

// Admin builds the service's admin HTTP server (not started): standard probes with the NATS and backend
// readiness checks, /metrics from tel, /v1/info, and the routes of AdminRoutes. token guards mutating routes.
func (s *Service) Admin(addr, token string, nc *nats.Conn, tel *telemetry.Telemetry) *admin.Server {
	adm := admin.New(admin.Config{
		Addr: addr, Token: token,
		Service: service.ServiceName(Family), Version: Version, Info: s.Info,
		Ready:   map[string]admin.Check{"nats": admin.NATSCheck(nc), "backend": s.Ready},
		Metrics: tel.MetricsHandler(), MeterProvider: tel.MeterProvider(),
	})
	s.AdminRoutes(adm)
	return adm
}

// AdminRoutes adds the storage service's operator routes to its admin HTTP server: reading objects' records
// and jobs is open like /metrics; deleting an object or cancelling a job needs the admin bearer token.
//
//	GET    /v1/objects?prefix=&start_after=&limit=   one page of objects
//	GET    /v1/object?key=K                           one object's record
//	DELETE /v1/object?key=K                           delete (token)
//	GET    /v1/jobs                                   jobs
//	GET    /v1/jobs/:id                               one job
//	POST   /v1/jobs/:id/cancel                        cancel (token)
func (s *Service) AdminRoutes(adm *admin.Server) {
	e := adm.Echo()
	e.GET("/v1/objects", func(c *echo.Context) error {
		req := storagev1.ListRequest{Prefix: c.QueryParam("prefix"), StartAfter: c.QueryParam("start_after")}
		if l := c.QueryParam("limit"); l != "" {
			n, err := strconv.Atoi(l)
			if err != nil {
				return errs.BadRequestf("limit %q is not a number", l)
			}
			req.Limit = n
		}
		rep, err := s.srv.List(c.Request().Context(), req)
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, rep)
	})
	e.GET("/v1/object", func(c *echo.Context) error {
		obj, err := s.srv.Stat(c.Request().Context(), storagev1.KeyRequest{Key: c.QueryParam("key")})
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, obj)
	})
	e.DELETE("/v1/object", func(c *echo.Context) error {
		rep, err := s.srv.Delete(c.Request().Context(), storagev1.KeyRequest{Key: c.QueryParam("key")})
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, rep)
	}, adm.RequireToken())
	e.GET("/v1/jobs", func(c *echo.Context) error {
		list, err := s.srv.JobList(c.Request().Context(), struct{}{})
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, list)
	})
	e.GET("/v1/jobs/:id", func(c *echo.Context) error {
		j, err := s.srv.JobStatus(c.Request().Context(), storagev1.JobRequest{ID: c.Param("id")})
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, j)
	})
	e.POST("/v1/jobs/:id/cancel", func(c *echo.Context) error {
		j, err := s.srv.JobCancel(c.Request().Context(), storagev1.JobRequest{ID: c.Param("id")})
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, j)
	}, adm.RequireToken())
}
