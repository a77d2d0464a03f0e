// Package model holds the structs the peer registers with gob, named so that gob calls
// them "*model.Goods" and "*model.Result", as in the msgo course.
package model

import "time"

type Goods struct {
	Id    int64
	Name  string
	Price float64
	Tags  []string
	Added time.Time
}

type Result struct {
	Code int
	Msg  string
	Data any
}
