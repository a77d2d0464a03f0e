module msgopeer

go 1.19
