package main

// Registration and lookup as msgo does them, over HTTP with the standard library: etcd's
// plain key (service name -> "host:port", through the v3 JSON gateway) and a Nacos
// instance (weight 10, metadata idc) kept alive by beats.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

var httpClient = &http.Client{Timeout: 5 * time.Second}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func etcdPost(endpoint, path string, body any) ([]byte, error) {
	payload, _ := json.Marshal(body)
	rsp, err := httpClient.Post(strings.TrimRight(endpoint, "/")+path, "application/json",
		bytes.NewReader(payload))
	if err != nil {
		return nil, err
	}
	defer rsp.Body.Close()
	data, err := io.ReadAll(rsp.Body)
	if rsp.StatusCode != 200 {
		return nil, fmt.Errorf("etcd %s: %s %s", path, rsp.Status, data)
	}
	return data, err
}

func etcdRegister(endpoint, service, address string) error {
	_, err := etcdPost(endpoint, "/v3/kv/put", map[string]string{
		"key": b64(service), "value": b64(address)})
	return err
}

func etcdDeregister(endpoint, service string) error {
	_, err := etcdPost(endpoint, "/v3/kv/deleterange", map[string]string{"key": b64(service)})
	return err
}

func etcdLookup(endpoint, service string) (string, error) {
	data, err := etcdPost(endpoint, "/v3/kv/range", map[string]string{"key": b64(service)})
	if err != nil {
		return "", err
	}
	var answer struct {
		Kvs []struct{ Value string }
	}
	if err := json.Unmarshal(data, &answer); err != nil {
		return "", err
	}
	if len(answer.Kvs) == 0 {
		return "", errors.New("no etcd key " + service)
	}
	value, err := base64.StdEncoding.DecodeString(answer.Kvs[0].Value)
	return string(value), err
}

type nacosInstance struct {
	base, service, group, ip string
	port                     int
	metadata                 map[string]string
}

func (n *nacosInstance) form() url.Values {
	metadata, _ := json.Marshal(n.metadata)
	return url.Values{"serviceName": {n.service}, "groupName": {n.group}, "ip": {n.ip},
		"port": {strconv.Itoa(n.port)}, "weight": {"10"}, "ephemeral": {"true"},
		"healthy": {"true"}, "enabled": {"true"}, "metadata": {string(metadata)}}
}

func nacosDo(method, target string, form url.Values) ([]byte, error) {
	var body io.Reader
	if method != http.MethodGet {
		body = strings.NewReader(form.Encode())
	} else {
		target += "?" + form.Encode()
	}
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	rsp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer rsp.Body.Close()
	data, err := io.ReadAll(rsp.Body)
	if rsp.StatusCode != 200 {
		return nil, fmt.Errorf("nacos %s: %s %s", target, rsp.Status, data)
	}
	return data, err
}

func (n *nacosInstance) register() error {
	_, err := nacosDo(http.MethodPost, n.base+"/nacos/v1/ns/instance", n.form())
	return err
}

func (n *nacosInstance) deregister() error {
	_, err := nacosDo(http.MethodDelete, n.base+"/nacos/v1/ns/instance", n.form())
	return err
}

// beat keeps the ephemeral instance alive, as the SDK's beat reactor does.
func (n *nacosInstance) beat() {
	beat, _ := json.Marshal(map[string]any{"serviceName": n.group + "@@" + n.service,
		"ip": n.ip, "port": n.port, "weight": 10, "metadata": n.metadata,
		"cluster": "DEFAULT"})
	form := url.Values{"serviceName": {n.service}, "groupName": {n.group},
		"beat": {string(beat)}}
	for range time.Tick(5 * time.Second) {
		if _, err := nacosDo(http.MethodPut, n.base+"/nacos/v1/ns/instance/beat", form); err != nil {
			_ = n.register()
		}
	}
}

// nacosLookup picks one healthy instance, as SelectOneHealthyInstance.
func nacosLookup(base, service, group string) (string, error) {
	data, err := nacosDo(http.MethodGet, base+"/nacos/v1/ns/instance/list", url.Values{
		"serviceName": {service}, "groupName": {group}, "healthyOnly": {"true"}})
	if err != nil {
		return "", err
	}
	var answer struct {
		Hosts []struct {
			Ip      string
			Port    int
			Healthy bool
			Enabled bool
		}
	}
	if err := json.Unmarshal(data, &answer); err != nil {
		return "", err
	}
	var healthy []string
	for _, h := range answer.Hosts {
		if h.Healthy && h.Enabled {
			healthy = append(healthy, net.JoinHostPort(h.Ip, strconv.Itoa(h.Port)))
		}
	}
	if len(healthy) == 0 {
		return "", errors.New("no healthy instance of " + service + " in nacos")
	}
	return healthy[rand.Intn(len(healthy))], nil
}
