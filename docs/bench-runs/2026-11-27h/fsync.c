#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <string.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int c,char**v){int n=atoi(v[2]);int fd=open(v[1],O_RDWR|O_CREAT|O_TRUNC,0600);
char buf[4096];memset(buf,0,sizeof buf);for(int i=0;i<4096;i++)pwrite(fd,buf,4096,(off_t)i*4096);fsync(fd);
double*l=malloc(n*sizeof(double));memset(buf,'x',sizeof buf);
for(int i=0;i<n;i++){double s=now();pwrite(fd,buf,4096,(off_t)(i%4096)*4096);fdatasync(fd);l[i]=now()-s;}
qsort(l,n,sizeof(double),cmp);
printf("%s: n=%d p50=%.0f us p90=%.0f p99=%.0f p99.9=%.0f max=%.0f\n",v[3],n,l[n/2],l[n*9/10],l[n*99/100],l[n*999/1000],l[n-1]);unlink(v[1]);}
